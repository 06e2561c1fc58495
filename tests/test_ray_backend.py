"""Studies and sweeps on Ray: ``workbench compare --backend ray`` and ``workbench sweep``, on a
local 2-CPU Ray that the module starts and shuts down."""

import json
import os
import sys

import pytest

if os.environ.get("CI") != "true":  # CI installs the [ray] extra: there a missing Ray fails
    pytest.importorskip("ray", reason="studies and sweeps on Ray need the [ray] extra")
import ray  # noqa: E402

from workbench import cli  # noqa: E402
from workbench.config import ConfigError  # noqa: E402
from workbench.integrations import MissingExtraError  # noqa: E402
from workbench.run.lock import RunLock, lock_held  # noqa: E402
from workbench.run.store import RunStore  # noqa: E402
from workbench.studies.study import EVAL_FILE, StudyPlan, run_one, run_study  # noqa: E402
from workbench.studies.sweep import SweepPlan, best_trials, load_plan, read_trials  # noqa: E402

SMALL = dict(num_prompts=2, num_generations=4, max_completion_length=12, threads=1)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def small_plan(**changes):
    values = dict(methods=["grpo", "eepo"], seeds=[0, 1], steps=2, eval_prompts=2, eval_samples=4,
                  checkpoint_every=1, overrides=SMALL)
    return StudyPlan(**{**values, **changes})


def _metrics(run_dir):
    """A run's metrics rows without their timing (the one column two identical runs differ in)."""
    return [{k: v for k, v in row.items() if k != "step_time"} for row in RunStore(run_dir).read_metrics()]


def test_a_study_on_ray_writes_the_serial_backends_eval_json(tmp_path, local_ray):
    plan = small_plan()
    serial = run_study(tmp_path / "serial", plan, progress=False)
    on_ray = run_study(tmp_path / "ray", plan, progress=False, backend="ray")
    names = ["base", "grpo-seed0", "eepo-seed0", "grpo-seed1", "eepo-seed1"]
    assert sorted(p.parent.name for p in on_ray.glob(f"*/{EVAL_FILE}")) == sorted(names)
    for name in names:
        assert json.loads((on_ray / name / EVAL_FILE).read_text()) == json.loads((serial / name / EVAL_FILE).read_text()), name
    for name in names[1:]:
        assert _metrics(on_ray / name) == _metrics(serial / name), name
        assert RunStore(on_ray / name).config().threads == 1  # the CPU its task reserved
    assert (on_ray / "study.json").read_text() == (serial / "study.json").read_text()


def test_a_study_on_ray_skips_finished_runs_and_resumes_stopped_ones(tmp_path, local_ray):
    from workbench.config import RunConfig
    from workbench.engine.trainer import Trainer

    plan = small_plan(methods=["grpo"], steps=3)
    reference = run_study(tmp_path / "serial", plan, progress=False)
    out = tmp_path / "study"
    run_one(plan.run_dir(out, "grpo", 0), plan, "grpo", 0)  # seed 0 finished
    stopped = Trainer(RunConfig(**SMALL, method="grpo", seed=1, checkpoint_every=1), out_dir=plan.run_dir(out, "grpo", 1))
    stopped.run(1, progress=False)  # seed 1 stopped after a step
    stopped.close()
    finished_eval = (out / "grpo-seed0" / EVAL_FILE).stat().st_mtime_ns
    run_study(out, plan, progress=False, backend="ray")
    assert (out / "grpo-seed0" / EVAL_FILE).stat().st_mtime_ns == finished_eval  # skipped
    resumed = out / "grpo-seed1"
    assert [row["step"] for row in RunStore(resumed).read_metrics()] == [0, 1, 2]
    assert _metrics(resumed) == _metrics(reference / "grpo-seed1")  # resumed exactly
    assert json.loads((resumed / EVAL_FILE).read_text()) == json.loads((reference / "grpo-seed1" / EVAL_FILE).read_text())


def test_a_failed_run_is_named_and_the_others_finish(tmp_path, local_ray):
    plan = small_plan(methods=["grpo"], steps=1)
    out = tmp_path / "study"
    busy = plan.run_dir(out, "grpo", 1)
    busy.mkdir(parents=True)
    lock = RunLock(busy)
    lock.acquire()  # another process is writing grpo-seed1
    try:
        with pytest.raises(RuntimeError, match=r"1 of the study's runs failed.*grpo-seed1: RunLockedError"):
            run_study(out, plan, progress=False, backend="ray")
    finally:
        lock.release()
    assert (out / "grpo-seed0" / EVAL_FILE).exists() and (out / "base" / EVAL_FILE).exists()
    assert not (busy / EVAL_FILE).exists()


def test_without_ray_the_backend_says_which_extra_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as when it is not installed
    with pytest.raises(MissingExtraError, match=r"--backend ray needs the \[ray\] extra .*pip install -e '.\[ray\]'"):
        run_study(tmp_path / "study", small_plan(), progress=False, backend="ray")
    code = cli.main(["compare", "--backend", "ray", "--methods", "grpo", "--seeds", "1", "--steps", "1",
                     "--out", str(tmp_path / "cli")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "[ray] extra" in err[0]
    monkeypatch.delitem(sys.modules, "workbench.integrations.ray_tune", raising=False)
    code = cli.main(["sweep", "--space", "learning_rate=grid:1e-3", "--out", str(tmp_path / "sweep")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("workbench: workbench sweep needs the [ray] extra")


def test_serial_compare_refuses_ray_only_settings(tmp_path):
    with pytest.raises(ConfigError, match="address.*only with backend='ray'"):
        run_study(tmp_path / "s", small_plan(), progress=False, address="ray://x:1")
    with pytest.raises(ConfigError, match="backend='dask'.*serial, ray"):
        run_study(tmp_path / "s", small_plan(), progress=False, backend="dask")


# --- sweeps -------------------------------------------------------------------------------------
def sweep_plan(**changes):
    values = dict(space={"learning_rate": "grid:4e-3,3e-3,2e-3,1e-3"}, steps=4, overrides=SMALL,
                  eval_prompts=2, eval_samples=4, checkpoint_every=2)
    return SweepPlan(**{**values, **changes})


def test_a_sweep_plan_checks_every_dimension_by_the_run_configs_declarations():
    plan = SweepPlan(space={"learning_rate": "loguniform:1e-4:1e-2", "method_options.alpha": "grid:0.1,0.3",
                            "seed": "0,1,2"}, samples=2, overrides={"method": "eepo"})
    assert plan.trials == 2 * 3 * 2
    assert [d.kind for d in plan.dimensions] == ["loguniform", "grid", "grid"]
    assert plan.run_config({"method_options.alpha": 0.3, "seed": 2}).method_options["alpha"] == 0.3
    cases = [({"learning_rate": "grid:1e-3,2.0"}, r"space.learning_rate='grid:0.001,2.0'.*learning_rate=2.0 is not allowed"),
             ({"learning_rate": "normal:0:1"}, r"space.learning_rate='grid:normal:0:1'.*KIND one of grid, choice, uniform"),
             ({"learning_rate": "loguniform:0:1e-2"}, r"loguniform: low < high, both > 0"),
             ({"learning_rate": "uniform:1e-2"}, r"uniform:LOW:HIGH"),
             ({"num_prompts": "randint:1:2.5"}, r"randint: two integers"),
             ({"lerning_rate": "grid:1"}, r"space.lerning_rate.*a RunConfig field"),
             ({"checkpoint_every": "grid:1,2"}, r"space.checkpoint_every.*a RunConfig field"),
             ({"method_options.alpha": "grid:0.3"}, r"space.method_options.alpha.*every value allowed")]  # grpo has no alpha
    for space, message in cases:
        with pytest.raises(ConfigError, match=message):
            SweepPlan(space=space)
    with pytest.raises(ConfigError, match="metric=''"):
        SweepPlan(space={"seed": "0,1"}, metric="")
    with pytest.raises(ConfigError, match="overrides.checkpoint_every"):
        SweepPlan(space={"seed": "0,1"}, overrides={"checkpoint_every": 3})


def test_a_sweep_records_every_trial_and_asha_stops_the_trailing_ones(tmp_path, local_ray):
    from workbench.integrations.ray_tune import run_sweep

    # the metric is the trial's own learning rate, so which trials trail is known in advance: ASHA
    # (grace 1, keep 1 in 2) keeps 4e-3 and 3e-3, and stops 2e-3 and 1e-3 at the first rung, whatever
    # the order in which the two concurrent trials reach it
    plan = sweep_plan(metric="learning_rate", grace_period=1, reduction_factor=2)
    out = run_sweep(tmp_path / "sweep", plan, progress=False)
    assert load_plan(out) == plan
    trials = read_trials(out).set_index("learning_rate")
    assert sorted(trials.index) == [1e-3, 2e-3, 3e-3, 4e-3]
    assert trials.loc[4e-3, "status"] == "finished"
    assert set(trials.loc[[1e-3, 2e-3], "status"]) == {"stopped"}
    for lr, trial in trials.iterrows():
        run_dir = out / trial["name"]
        assert RunStore(run_dir).config().learning_rate == lr
        rows = RunStore(run_dir).read_metrics()
        assert len(rows) == trial["step"] + 1 and rows[-1]["learning_rate"] == trial["metric"] == lr
        assert (run_dir / EVAL_FILE).exists() == (trial["status"] == "finished") == (len(rows) == plan.steps)
        if trial["status"] == "finished":
            assert 0 <= trial["pass@1"] <= 1
    assert list(best_trials(out).learning_rate[:2]) == [4e-3, 3e-3] if trials.loc[3e-3, "status"] == "finished" \
        else list(best_trials(out).learning_rate[:1]) == [4e-3]
    assert not any(lock_held(out / name) for name in trials["name"])


def test_the_sweep_command_lists_the_best_trials(tmp_path, local_ray, capsys):
    out = tmp_path / "sweep"
    code = cli.main(["sweep", "--space", "learning_rate=grid:1e-3,5e-3", "--space", "method_options.alpha=uniform:0.1:0.5",
                     "--set", "method=eepo", *[f"--set={k}={v}" for k, v in SMALL.items()], "--steps", "2",
                     "--scheduler", "fifo", "--eval-prompts", "2", "--eval-samples", "4", "--out", str(out)])
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0, captured.err[-3000:]
    trials = read_trials(out)
    assert list(trials.status) == ["finished", "finished"]
    assert all(0.1 <= a <= 0.5 for a in trials["method_options.alpha"])
    assert {RunStore(out / n).config().method_options["alpha"] for n in trials.name} == set(trials["method_options.alpha"])
    assert "2 trials of 2 steps on Ray (fifo, metric reward_mean, max)" in printed
    assert "best trials by reward_mean" in printed and all(name in printed for name in trials.name)
    # the same command again: the same plan, every trial finished, nothing runs again
    before = {n: (out / n / "metrics.jsonl").read_bytes() for n in trials.name}
    assert cli.main(["sweep", "--space", "learning_rate=grid:1e-3,5e-3", "--space", "method_options.alpha=uniform:0.1:0.5",
                     "--set", "method=eepo", *[f"--set={k}={v}" for k, v in SMALL.items()], "--steps", "2",
                     "--scheduler", "fifo", "--eval-prompts", "2", "--eval-samples", "4", "--out", str(out)]) == 0
    assert before == {n: (out / n / "metrics.jsonl").read_bytes() for n in trials.name}
    assert cli.main(["sweep", "--space", "learning_rate=grid:1e-3", "--out", str(out)]) == 2  # another plan: refused
    assert "resume it with the same plan" in capsys.readouterr().err
