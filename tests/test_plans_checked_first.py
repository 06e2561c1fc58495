"""Issue 32 items 9 and 10: a study's or sweep's plan is checked whole before anything is written,
and a Ray address that does not answer is one line within seconds."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workbench import cli
from workbench.config import ConfigError
from workbench.studies.study import StudyPlan
from workbench.studies.sweep import SweepPlan

SMALL_SET = ["--set", "num_prompts=2", "--set", "num_generations=4", "--set", "max_completion_length=8"]


def test_a_study_plan_that_no_run_can_train_is_refused_before_it_is_written(tmp_path, capsys):
    out = tmp_path / "s4"
    code = cli.main(["compare", "--methods", "grpo", "--seeds", "1", "--steps", "1", "--set", "num_generations=1",
                     "--out", str(out)])
    assert code == 2 and "num_generations=1 is not allowed" in capsys.readouterr().err
    assert not out.exists()  # no study.json holding the bad value: the corrected command is a new plan
    with pytest.raises(ConfigError, match="an even number for EEPO"):
        StudyPlan(methods=["grpo", "eepo"], seeds=[0], steps=1, overrides={"num_generations": 3})


@pytest.mark.parametrize(
    "space, says",
    [
        ({"num_prompts": "uniform:2:3"}, r"space.num_prompts='uniform:2:3'.*num_prompts is an integer, so randint"),
        ({"seed": "uniform:0:5"}, r"space.seed='uniform:0:5'.*seed is an integer"),
        ({"method": "grid:grpo,eepo", "num_generations": "grid:4,3"},
         r"space=\"method='eepo', num_generations=3\".*an even number for EEPO"),
        ({"method": "choice:grpo,policy_split", "num_generations": "randint:3:4"},
         r"num_generations=3 is not allowed: an even number for Policy Split"),
    ],
)
def test_a_sweep_plan_is_checked_over_every_value_and_combination(space, says):
    with pytest.raises(ConfigError, match=says):
        SweepPlan(space=space)


def test_integer_dimensions_that_stay_integers_are_accepted():
    plan = SweepPlan(space={"num_prompts": "randint:2:3", "method": "grid:grpo,eepo", "num_generations": "grid:4,6"})
    assert plan.trials == 4


def test_a_ray_address_where_nothing_answers_is_one_line_within_seconds(tmp_path, capsys):
    pytest.importorskip("ray", reason="the [ray] extra")
    started = time.monotonic()
    code = cli.main(["compare", "--backend", "ray", "--address", "127.0.0.1:1", "--methods", "grpo", "--seeds", "1",
                     "--steps", "1", *SMALL_SET, "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - started < 15
    assert err.startswith("workbench: address='127.0.0.1:1' is not allowed: the address of a running Ray cluster: "
                          "nothing answers at 127.0.0.1:1") and err.count("\n") == 1


def test_a_failed_trial_is_recorded_with_its_error_and_in_the_exit_code(tmp_path, capsys):
    pytest.importorskip("ray", reason="the [ray] extra")
    import json

    out = tmp_path / "sweep"
    # the metric only EEPO records: the GRPO trial fails at its first step, the EEPO one finishes
    code = cli.main(["sweep", "--space", "method=grid:grpo,eepo", "--metric", "eepo_gate", "--scheduler", "fifo",
                     "--steps", "1", "--eval-prompts", "1", "--eval-samples", "2", *SMALL_SET, "--set", "threads=1",
                     "--out", str(out)])
    err = capsys.readouterr().err
    trials = {t["params"]["method"]: t for t in json.loads((out / "trials.json").read_text())["trials"]}
    assert trials["eepo"]["status"] == "finished" and trials["grpo"]["status"] == "failed"
    assert "metric='eepo_gate' is not allowed: a metric every step records" in trials["grpo"]["error"]
    assert code == 2 and "workbench: 1 of 2 trials failed" in err and "metric='eepo_gate'" in err


def _descendants(pid: int) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(c) for child in children for c in (child, *_descendants(int(child)))]


@pytest.mark.slow
def test_ctrl_c_while_ray_starts_is_one_line_and_leaves_no_ray_behind(tmp_path):
    pytest.importorskip("ray", reason="the [ray] extra")
    out = tmp_path / "study"
    command = [sys.executable, "-m", "workbench.cli", "compare", "--methods", "grpo", "--seeds", "1", "--steps", "1",
               "--backend", "ray", "--out", str(out), *SMALL_SET]
    study = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not _descendants(study.pid) and time.monotonic() < deadline:  # Ray's first process: it is starting
        time.sleep(0.05)
    ray_processes = _descendants(study.pid)
    assert ray_processes, "Ray never started"
    study.send_signal(signal.SIGINT)
    _, stderr = study.communicate(timeout=120)
    assert study.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("workbench: interrupted")
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in ray_processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in ray_processes if Path(f"/proc/{pid}").exists()], "Ray processes left running"
