"""The run directory under stress (issue 18): stopped anywhere, two writers, readers during a
write, damaged metrics lines, an honest resume, YAML 1.2, one-line CLI errors, sizes checked
before anything is allocated. Every run is the embedded model with a tiny step."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from workbench import ConfigError, PolicyLoadError, RunConfig, Trainer
from workbench.cli import main
from workbench.models.loading import resolve
from workbench.run.store import CheckpointError, DamagedMetricsWarning, RunLockedError, RunStore
from workbench.studies.report import _read_metrics
from workbench.studies.study import StudyPlan
from workbench.studies.study import claim_plan as _claim_study
from workbench.tasks import RewardFunctionError

SMALL = dict(num_prompts=2, num_generations=2, max_completion_length=8, seed=5, threads=1)
SMALL_SET = [arg for key, value in SMALL.items() for arg in ("--set", f"{key}={value}")]
CLI = [sys.executable, "-m", "workbench.cli"]
GRPO_PHASES = 5  # sample, score, advantage, update, metrics


def tiny(**changes) -> RunConfig:
    return RunConfig(**{**SMALL, **changes})


def steps_of(run: Path) -> list[int]:
    return [r["step"] for r in RunStore(run).read_metrics()]


def files_digest(run: Path, ignore=(".lock", "eval.json", ".eval.json.lock")) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in run.rglob("*") if p.is_file() and p.name not in ignore):
        digest.update(path.relative_to(run).as_posix().encode() + path.read_bytes())
        digest.update(str(path.stat().st_mtime_ns).encode())
    return digest.hexdigest()


def history(trainer) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "step_time"} for r in trainer.records]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Four steps without a stop: what every interrupted and resumed run must reproduce."""
    trainer = Trainer(tiny(), out_dir=tmp_path_factory.mktemp("straight") / "run")
    trainer.run(4, progress=False)
    trainer.close()
    return history(trainer)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A run of 4 steps, checkpoints at 0 and 4 (copy it before changing it)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    trainer = Trainer(tiny(), out_dir=run)
    trainer.run(4, progress=False)
    trainer.close()
    return run


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


# --- stopped anywhere: always resumable ----------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_an_interrupt_at_a_random_phase_leaves_a_run_that_resumes_exactly(tmp_path, straight, seed):
    stop_at = random.Random(seed).randrange(4 * GRPO_PHASES)  # which phase of which step
    trainer = Trainer(tiny(), out_dir=tmp_path / "run")
    seen = []

    def interrupt(phase):
        seen.append(phase.name)
        if len(seen) == stop_at + 1:
            raise KeyboardInterrupt

    trainer.subscribe(interrupt)
    with pytest.raises(KeyboardInterrupt):
        trainer.run(4, progress=False)
    finished = trainer.step_index  # the interrupted step is undone unless it had reached "metrics"
    assert finished == (stop_at + 1) // GRPO_PHASES
    trainer.close()
    assert RunStore(tmp_path / "run").checkpoint_steps()[-1] == finished
    resumed = Trainer.resume(tmp_path / "run")
    assert resumed.step_index == finished
    resumed.run(4 - finished, progress=False)
    assert history(resumed) == straight
    assert steps_of(tmp_path / "run") == [0, 1, 2, 3]


def test_a_crash_in_the_first_step_leaves_a_resumable_run(tmp_path):
    calls = []

    def reward(completions, **_):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the reward server is down")
        return [1.0] * len(completions)

    trainer = Trainer(tiny(), out_dir=tmp_path / "run", reward_funcs=reward)
    with pytest.raises(RewardFunctionError, match="reward server"):
        trainer.run(3, progress=False)
    trainer.close()
    assert RunStore(tmp_path / "run").checkpoint_steps() == [0]
    resumed = Trainer.resume(tmp_path / "run", reward_funcs=reward)
    resumed.run(1, progress=False)
    assert resumed.step_index == 1 and steps_of(tmp_path / "run") == [0]


def wait_for_rows(run: Path, rows: int, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if (run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_bytes().splitlines()) >= rows:
            return
        time.sleep(0.05)
    raise AssertionError(f"the training process wrote fewer than {rows} rows (exit code {process.poll()})")


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=["kill", "ctrl-c", "term"])
def test_a_training_process_stopped_by_a_signal_leaves_a_run_that_resumes(tmp_path, how):
    run, rows = tmp_path / "run", random.Random(how).randint(1, 3)
    process = subprocess.Popen([*CLI, "train", "--steps", "40", "--out", str(run), *SMALL_SET],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_rows(run, rows, process)
    process.send_signal(how)
    _, err = process.communicate(timeout=300)
    if how == signal.SIGKILL:  # nothing can be saved: the run resumes from its first checkpoint
        assert RunStore(run).checkpoint_steps() == [0]
    else:  # saved on the way out, at the last finished step
        assert process.returncode == 130 and f"train --resume --out {run}" in err
        assert RunStore(run).checkpoint_steps()[-1] == len(steps_of(run)) >= rows
    assert main(["train", "--resume", "--steps", str(rows + 1), "--out", str(run)]) == 0
    assert steps_of(run) == list(range(rows + 1))


# --- one writer, many readers --------------------------------------------------------------------
def test_a_second_writer_is_refused_with_the_holder_named(tmp_path, capsys):
    run = tmp_path / "run"
    trainer = Trainer(tiny(), out_dir=run)
    trainer.step()
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()} .*this process"):
        Trainer.resume(run)
    other = subprocess.run([*CLI, "train", "--resume", "--steps", "3", "--out", str(run)],
                           capture_output=True, text=True, timeout=300)
    assert other.returncode == 2 and other.stderr.count("\n") == 1
    assert f"is being written by pid {os.getpid()}" in other.stderr
    assert main(["train", "--steps", "1", "--out", str(run)]) == 2  # a new run there: refused as well
    trainer.step()  # the holder carries on undisturbed
    assert steps_of(run) == [0, 1]
    trainer.close()
    Trainer.resume(run).close()  # free again


def test_two_trainings_started_together_on_one_directory_leave_one_run(tmp_path):
    run = tmp_path / "run"
    processes = [subprocess.Popen([*CLI, "train", "--steps", "2", "--out", str(run), *SMALL_SET, "--set", f"seed={s}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for s in (1, 2)]
    codes = sorted(p.wait(timeout=600) for p in processes)
    assert codes == [0, 2]
    assert steps_of(run) == [0, 1]
    seed = RunStore(run).config().seed
    assert all(r["step"] in (0, 1) for r in RunStore(run).read_metrics()) and seed in (1, 2)


def test_eval_reads_a_live_run_without_writing_into_it(tmp_path, capsys):
    run = tmp_path / "run"
    trainer = Trainer(tiny(), out_dir=run)
    trainer.run(2, progress=False)
    trainer.step()  # step 2 is in metrics.jsonl but after the last checkpoint (2): eval must not trim it
    before = files_digest(run)
    for split in ("test", "ood"):
        assert main(["eval", str(run), "--split", split, "--n-samples", "2", "--num-prompts", "2"]) == 0
    assert files_digest(run) == before and steps_of(run) == [0, 1, 2]
    evaluations = json.loads((run / "eval.json").read_text())
    assert set(evaluations["step-2"]) == {"test", "ood"}  # merged, earlier entries kept
    trainer.step()  # the writer never noticed
    assert steps_of(run) == [0, 1, 2, 3]
    trainer.close()


# --- damaged metrics lines ------------------------------------------------------------------------
DAMAGE = {
    "cut-off": b'{"step": 9, "reward_me',
    "not-json": b"garbage from an editor",
    "non-utf8": b"\xff\xfe\x00 bytes",
    "no-step": b'{"reward_mean": 1.0}',
    "not-an-object": b"[1, 2, 3]",
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_metrics_line_anywhere_is_named_skipped_and_set_aside(run_copy, kind):
    lines = (run_copy / "metrics.jsonl").read_bytes().splitlines()
    at = random.Random(kind).randrange(len(lines) + 1)
    lines.insert(at, DAMAGE[kind])
    lines.insert(random.Random(kind + "b").randrange(len(lines) + 1), b"")  # blank lines are harmless
    (run_copy / "metrics.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    damaged_line = lines.index(DAMAGE[kind]) + 1
    with pytest.warns(DamagedMetricsWarning, match=rf"line {damaged_line} .*skipped"):
        assert steps_of(run_copy) == [0, 1, 2, 3]
    with pytest.warns(DamagedMetricsWarning):
        assert list(_read_metrics(run_copy / "metrics.jsonl")["step"]) == [0, 1, 2, 3]  # the report reads the same
    with pytest.warns(DamagedMetricsWarning, match="set aside"):
        resumed = Trainer.resume(run_copy)
    assert [r["step"] for r in resumed.records] == [0, 1, 2, 3]
    aside = [json.loads(line) for line in (run_copy / "metrics.jsonl.corrupt").read_text().splitlines()]
    assert [a["line"] for a in aside] == [damaged_line]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten file is clean
        assert steps_of(run_copy) == [0, 1, 2, 3]
    resumed.close()


# --- an honest resume -----------------------------------------------------------------------------
def test_resume_applies_live_changes_records_them_and_refuses_the_rest(run_copy, capsys):
    assert main(["train", "--resume", "--steps", "5", "--out", str(run_copy), "--set", "learning_rate=1e-3"]) == 0
    assert RunStore(run_copy).config().learning_rate == 1e-3
    capsys.readouterr()
    for args in (["--method", "eepo"], ["--set", "num_generations=8"], ["--preset", "quick"]):
        assert main(["train", "--resume", "--steps", "6", "--out", str(run_copy), *args]) == 2
        error = capsys.readouterr().err
        assert "config.yaml" in error and "Fork the run" in error and error.count("\n") == 1
    assert steps_of(run_copy) == [0, 1, 2, 3, 4]


def test_resume_refuses_an_empty_config_and_a_checkpoint_without_digests(run_copy):
    config = (run_copy / "config.yaml").read_text()
    (run_copy / "config.yaml").write_text("")
    with pytest.raises(ConfigError, match=r"config.yaml.*empty"):
        Trainer.resume(run_copy)
    (run_copy / "config.yaml").write_text(config)
    state_path = run_copy / "checkpoints" / "step-4" / "state.json"
    state = json.loads(state_path.read_text())
    for broken, message in (({k: v for k, v in state.items() if k != "sha256"}, "must record the digests"),
                            ({**state, "nan_skips": -7}, "nan_skips=-7")):
        state_path.write_text(json.dumps(broken))
        with pytest.raises(CheckpointError, match=message):
            Trainer.resume(run_copy)
    assert steps_of(run_copy) == [0, 1, 2, 3]  # nothing written on the way


def test_resume_with_eval_keeps_the_base_models_entry(tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "evaluate", lambda self, split, progress=False: {"pass@1": self.step_index / 10})
    run = tmp_path / "run"
    assert main(["train", "--steps", "1", "--eval", "--out", str(run), *SMALL_SET]) == 0
    assert main(["train", "--resume", "--steps", "2", "--eval", "--out", str(run)]) == 0
    evaluations = json.loads((run / "eval.json").read_text())
    assert evaluations["base"]["test"] == {"pass@1": 0.0} and evaluations["final"]["test"] == {"pass@1": 0.2}


# --- YAML as YAML 1.2 reads it, numpy numbers ------------------------------------------------------
def test_config_files_and_set_read_numbers_as_written(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("learning_rate: 1e-3\nmethod: eepo\nmethod_options: {unlearn_lr: 1e-2}\n")
    assert RunConfig.from_yaml(config).learning_rate == 0.001
    assert RunConfig.from_yaml(config).method_options == {"unlearn_lr": 0.01}
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--steps", "1", "--out", str(out), *SMALL_SET,
                 "--set", "checkpoint_every=010", "--set", "method_options={unlearn_lr: 2e-2}"]) == 0
    saved = RunStore(out).config()
    assert saved.checkpoint_every == 10 and saved.method_options["unlearn_lr"] == 0.02
    capsys.readouterr()
    assert main(["train", "--steps", "1", "--out", str(tmp_path / "r2"), "--set", "num_prompts=1:30"]) == 2
    assert "num_prompts='1:30' (str) is not allowed: an integer >= 1" in capsys.readouterr().err


def test_numpy_numbers_are_accepted_and_written_as_plain_yaml():
    cfg = RunConfig(num_prompts=np.int64(3), learning_rate=np.float32(0.5), method="eepo",
                    method_options={"unlearn_lr": np.float64(0.01)})
    assert type(cfg.num_prompts) is int and type(cfg.learning_rate) is float
    assert "!!python" not in cfg.to_yaml() and RunConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"num_prompts=np.float64\(2.5\) \(float64\) is not allowed"):
        RunConfig(num_prompts=np.float64(2.5))


# --- every CLI error is one line ------------------------------------------------------------------
def cli_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    empty_csv, broken_jsonl, latin1 = tmp_path / "empty.csv", tmp_path / "broken.jsonl", tmp_path / "latin1.jsonl"
    empty_csv.write_text("")
    broken_jsonl.write_text('{"prompt": "1+1", "answer": "2"}\n{"prompt": \n')
    latin1.write_bytes('{"prompt": "caf\u00e9", "answer": "1"}\n'.encode("latin-1"))
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    out = str(tmp_path / "out")
    broken_model = Path(shutil.copytree(resolve("tiny"), tmp_path / "broken-model"))
    weights = broken_model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    study = tmp_path / "study"
    _claim_study(study, StudyPlan(methods=["grpo"], seeds=[0], steps=3))
    return {
        "steps 0": (["train", "--steps", "0"], "--steps: 0 is not allowed"),
        "build-tiny steps 0": (["build-tiny", "--steps", "0"], "--steps: 0 is not allowed"),
        "build-tiny steps -1": (["build-tiny", "--steps", "-1"], "--steps: -1 is not allowed"),
        "eval no prompts": (["eval", "--num-prompts", "0"], "--num-prompts: 0 is not allowed"),
        "eval k text": (["eval", "--k", "abc"], "--k 'abc': expected comma-separated integers"),
        "eval k beyond": (["eval", "--k", "1,100", "--n-samples", "2", "--num-prompts", "1"], "--k 1,100: each k from 1 to --n-samples (2)"),
        "huge seed": (["train", "--out", out, "--set", "seed=100000000000000000000000"], "seed="),
        "no cuda": (["train", "--out", out, "--set", "device=cuda"], "a device this machine has"),
        "gpu preset": (["train", "--out", out, "--preset", "gpu"], "the gpu preset needs a CUDA GPU"),
        "target_modules": (["train", "--out", out, "--set", "target_modules=[nope]"], "could not add the LoRA adapter"),
        "empty csv": (["train", "--out", out, "--task", str(empty_csv)], f"{empty_csv}: not a readable .csv"),
        "broken jsonl": (["train", "--out", out, "--task", str(broken_jsonl)], f"{broken_jsonl}: not a readable"),
        "latin-1 jsonl": (["train", "--out", out, "--task", str(latin1)], f"{latin1}: not a readable"),
        "out is a file": (["train", "--out", str(a_file / "run")], str(a_file)),
        "too big": (["train", "--out", out, "--set", "num_prompts=1000000"], "GB free"),
        "cold": (["train", "--out", out, "--set", "temperature=1e-40"], "temperature=1e-40 is not allowed"),
        "bad set": (["train", "--out", out, "--set", "learning_rate"], "expected KEY=VALUE"),
        "corrupt weights": (["train", "--out", out, "--model", str(broken_model)], "could not load model"),
        "changed compare plan": (["compare", "--methods", "grpo", "--seeds", "1", "--steps", "5", "--out", str(study)],
                                 "steps=5 is not allowed: the plan of the study"),
    }


def test_every_cli_error_is_one_line(tmp_path, capsys):
    for name, (argv, expected) in cli_cases(tmp_path).items():
        with pytest.raises(SystemExit) if argv[1:2] == ["--steps"] or "--num-prompts" in argv[:2] else _no_exit():
            code = main(argv)
            assert code == 2, name
        err = capsys.readouterr().err
        lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]  # progress bars aside
        errors = [line for line in lines if "workbench:" in line]
        assert len(errors) == 1 and errors[0].startswith("workbench: ") and "Traceback" not in err, (name, err)
        assert expected in errors[0], (name, err)
        assert not (tmp_path / "out").exists(), name  # refused before a run directory was made


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    import errno

    def full(self, cfg):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.dir / "config.yaml"))

    monkeypatch.setattr(RunStore, "create", full)
    assert main(["train", "--steps", "1", "--out", str(tmp_path / "run"), *SMALL_SET]) == 2
    err = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert err[-1] == f"workbench: No space left on device: {tmp_path / 'run' / 'config.yaml'}"
    assert not (tmp_path / "run").exists()  # the lock's empty directory is taken back


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ConfigError):
        main(["--debug", "train", "--out", str(tmp_path / "r"), "--set", "device=cuda"])


# --- sizes checked first --------------------------------------------------------------------------
def test_a_step_that_cannot_fit_in_memory_is_refused_before_allocating(tmp_path):
    for change in ({"num_prompts": 1_000_000}, {"max_completion_length": 100_000_000}, {"lora_r": 1_000_000}):
        with pytest.raises(ConfigError, match=r"needs at least [\d.]+ GB .* GB free.*check_memory=false"):
            Trainer(tiny(**change), out_dir=tmp_path / "run")
        assert not (tmp_path / "run").exists()


def test_a_prompt_longer_than_the_context_is_refused_by_name(tmp_path):
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps({"prompt": "1+" * 20_000 + str(i), "answer": str(20_000 + i)}) + "\n"
                            for i in range(20)))
    trainer = Trainer(tiny(task=str(data)))
    with pytest.raises(ConfigError, match=r"max_completion_length=8 is not allowed: at most 0: the longest prompt"):
        trainer.step()


def test_rewards_that_overflow_float32_are_an_error_not_an_infinite_mean():
    trainer = Trainer(tiny(), reward_funcs=lambda completions, **_: [1e308] * len(completions))
    with pytest.raises(RewardFunctionError, match=r"reward 1e\+308 .* not a finite float32"):
        trainer.step()


# --- smaller ones ---------------------------------------------------------------------------------
def test_the_advice_after_a_corrupt_checkpoint_works(run_copy, tmp_path):
    trainer = Trainer.resume(run_copy)
    trainer.run(1, progress=False)  # checkpoints at 0, 4, 5
    trainer.close()
    (run_copy / "checkpoints" / "step-5" / "optimizer.pt").write_bytes(b"broken")
    with pytest.raises(CheckpointError, match="rename it to broken-step-5 to resume from step 4") as info:
        Trainer.resume(run_copy)
    assert "broken-step-5" in str(info.value)
    os.rename(run_copy / "checkpoints" / "step-5", run_copy / "checkpoints" / "broken-step-5")
    assert Trainer.resume(run_copy).step_index == 4


def test_a_model_with_its_own_code_is_refused_even_with_a_known_model_type(tmp_path):
    model = Path(shutil.copytree(resolve("tiny"), tmp_path / "model"))
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(PolicyLoadError, match="auto_map.*trust_remote_code=True"):
        Trainer(tiny(model=str(model)))


def test_a_data_file_task_is_recorded_by_its_absolute_path(tmp_path, monkeypatch):
    (tmp_path / "data.jsonl").write_text("".join(json.dumps({"prompt": f"{i}+1", "answer": str(i + 1)}) + "\n"
                                                 for i in range(30)))
    monkeypatch.chdir(tmp_path)
    trainer = Trainer(tiny(task="data.jsonl"), out_dir=tmp_path / "run")
    trainer.close()
    assert RunStore(tmp_path / "run").config().task == str(tmp_path / "data.jsonl")
    monkeypatch.chdir("/")
    Trainer.resume(tmp_path / "run").close()  # from anywhere
    with pytest.raises(ConfigError, match=r"relative path is read from the current directory, /;"):
        RunConfig(task="data.jsonl")


def test_markup_in_run_names_is_shown_as_text_in_report_legends(finished_run, tmp_path):
    from workbench.studies.report import write_report

    runs = [shutil.copytree(finished_run, tmp_path / name) for name in ("<b>a", "b")]  # a directory name
    page = Path(write_report(runs, tmp_path / "report.html")).read_text()
    legends = page.replace("\\u003c", "<").replace("\\u003e", ">").replace("\\u00b7", "·")  # plotly's JSON spelling
    assert "&lt;b&gt;a · " in legends and '"<b>a · ' not in legends
