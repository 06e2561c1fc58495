"""Issue 32: the run directory's promises on every engine. The workbench Trainer and the TRL backend
own one ``RunWriter``: one writer, a checkpoint at start and stop, a resume only on the engine that
trained the run and only as it was configured, digests over every checkpoint file, sizes checked
before the model is built, ``eval`` on any run; eval.json safe under concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workbench import RunConfig, Trainer
from workbench.cli import main
from workbench.config import ConfigError
from workbench.run.lock import lock_held
from workbench.run.store import CheckpointError, RunLockedError, RunStore
from workbench.run.writer import RunWriter

SMALL = dict(num_prompts=2, num_generations=4, max_completion_length=8, threads=1, seed=3)
SMALL_SET = [arg for key, value in SMALL.items() for arg in ("--set", f"{key}={value}")]
CLI = [sys.executable, "-m", "workbench.cli"]
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def trl_trainer():
    pytest.importorskip("trl", reason="the TRL backend needs the [scale] extra")
    from workbench.integrations.trl import WorkbenchGRPOTrainer

    return WorkbenchGRPOTrainer


def steps_of(run: Path) -> list[int]:
    return [r["step"] for r in RunStore(run).read_metrics()]


# --- item 4: concurrent writers of eval.json ------------------------------------------------------
def _add_evaluations(run: str, writer: int, count: int) -> None:
    store = RunStore(run)
    for i in range(count):
        store.add_evaluation(f"w{writer}-{i}", "test", {"pass@1": i / count})


def test_three_concurrent_writers_of_eval_json_lose_nothing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_add_evaluations, args=(str(run), w, 40)) for w in range(3)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(60)
        assert process.exitcode == 0
    evaluations = RunStore(run).read_evaluations()
    assert len(evaluations) == 120  # every writer's every entry
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]  # no temporary left behind


# --- item 2 and the suite's "resume only on its own engine" ----------------------------------------
def test_a_run_resumes_only_on_the_engine_that_trained_it(tmp_path):
    engine = trl_trainer()
    workbench_run = tmp_path / "w"
    trainer = Trainer(RunConfig(**SMALL), out_dir=workbench_run)
    trainer.run(2, progress=False)
    trainer.close()
    before = (workbench_run / "metrics.jsonl").read_bytes()
    with pytest.raises(ConfigError, match=r"backend='trl'.*\(workbench\).*--backend workbench"):
        engine(RunConfig(**SMALL), workbench_run, steps=4, resume=True)
    assert (workbench_run / "metrics.jsonl").read_bytes() == before and steps_of(workbench_run) == [0, 1]
    code = main(["train", "--backend", "trl", "--steps", "4", "--out", str(workbench_run), "--resume", *SMALL_SET])
    assert code == 2 and steps_of(workbench_run) == [0, 1]

    trl_run = tmp_path / "t"
    tr = engine(RunConfig(**SMALL), trl_run, steps=1)
    # one writer while it lives: the kernel's lock table shows it, a second writer is refused
    assert lock_held(trl_run) is True
    with pytest.raises(RunLockedError, match="is being written by pid"):
        RunWriter.reopen(trl_run, engine="trl")
    tr.train()
    assert lock_held(trl_run) is False and steps_of(trl_run) == [0]
    assert RunStore(trl_run).checkpoint_steps() == [0, 1]  # saved where it started and where it ended
    with pytest.raises(ConfigError, match=r"backend='workbench'.*\(trl\).*--backend trl"):
        Trainer.resume(trl_run)
    # a reader takes any engine's run: eval reads the TRL run's last adapter
    assert main(["eval", str(trl_run), "--n-samples", "2", "--num-prompts", "2"]) == 0
    assert "step-1" in RunStore(trl_run).read_evaluations()


# --- item 3 and the suite's "a stop at any time leaves a run that resumes exactly" ------------------
# an entropy bonus moves the adapter every step, even when a group's rewards are all equal
MOVING = ["--set", "entropy_coef=0.05"]


def _train(run: Path, steps: int, *extra: str) -> subprocess.Popen:
    command = [*CLI, "train", "--backend", "trl", "--method", "grpo", "--steps", str(steps), "--out", str(run)]
    return subprocess.Popen([*command, *SMALL_SET, *MOVING, *extra], env=ENV, stderr=subprocess.PIPE, text=True)


def _rows(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "step_time"} for r in RunStore(run).read_metrics()]


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_a_trl_run_stopped_by_a_signal_is_saved_and_resumes_exactly(stop, tmp_path):
    trl_trainer()
    reference, run = tmp_path / "reference", tmp_path / "run"
    straight = _train(reference, 8)
    stopped = _train(run, 8, "--set", "checkpoint_every=3")
    deadline = time.monotonic() + 600
    while len(steps_of(run)) < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(random.uniform(0, 0.5))  # at any phase of the step under way
    stopped.send_signal(stop)
    _, stderr = stopped.communicate(timeout=600)
    saved = RunStore(run).checkpoint_steps()[-1]
    if stop == signal.SIGKILL:  # no save: the last checkpoint stands, the rows after it are run again
        assert stopped.returncode == -9 and saved in (0, 3, 6) and len(steps_of(run)) < 8
    else:
        assert stopped.returncode == 130
        assert 1 <= saved < 8 and steps_of(run) == list(range(saved))  # stopped at the end of a step, saved there
        assert stderr.count("workbench: interrupted") == 1 and f"is saved at step {saved}" in stderr
    assert straight.wait(timeout=600) == 0
    resumed = _train(run, 8, "--resume")
    assert resumed.wait(timeout=600) == 0
    assert _rows(run) == _rows(reference)  # every step once, as a run never stopped recorded it
    assert all(row["grad_norm"] > 0 for row in _rows(run))  # every step moved the adapter
    if stop != signal.SIGINT:
        return
    # TRL's own checkpoint files carry digests: a flipped bit is named before anything loads
    optimizer = run / "checkpoints" / "step-8" / "trl" / "optimizer.pt"
    data = bytearray(optimizer.read_bytes())
    data[len(data) // 2] ^= 1
    optimizer.write_bytes(bytes(data))
    again = subprocess.run([*CLI, "train", "--backend", "trl", "--steps", "9", "--out", str(run), "--resume"],
                           env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "trl/optimizer.pt is truncated or corrupt" in again.stderr
    assert steps_of(run) == list(range(8))


def _launch(run: Path, *extra: str) -> subprocess.Popen:
    """A 2-process TRL run under ``accelerate launch``, in a process group of its own (as a terminal's job)."""
    from test_trl_backend import ACCELERATE_ENV, accelerate_command

    command = accelerate_command(run, "grpo", 8, *SMALL_SET, *MOVING, *extra)
    return subprocess.Popen(command, env=ACCELERATE_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _stop_after_a_step(run: Path, launcher: subprocess.Popen, stop) -> list[int]:
    """Wait for the run's first metrics row, then ``stop(launcher)`` a moment later; the workers' pids."""
    deadline = time.monotonic() + 600
    while len(steps_of(run)) < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    children = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True)
    workers = [int(pid) for pid in children.stdout.split()]
    time.sleep(random.uniform(0, 0.5))
    stop(launcher)
    return workers


@pytest.mark.slow
def test_two_trl_processes_stopped_by_ctrl_c_or_a_killed_launcher_save_and_resume_exactly(tmp_path):
    """Ctrl-C reaches the launcher and both workers (the terminal signals the whole job), and the
    launcher forwards a SIGTERM at once: one stop, saved once. A SIGKILL of the launcher used to leave
    both workers training on, orphaned, to the last step; now they stop at a step's end and save."""
    trl_trainer()
    reference = tmp_path / "reference"
    straight = _launch(reference)
    assert straight.wait(timeout=900) == 0, straight.stderr.read()[-3000:]

    ctrl_c = tmp_path / "ctrl-c"
    launcher = _launch(ctrl_c)
    _stop_after_a_step(ctrl_c, launcher, lambda p: os.killpg(p.pid, signal.SIGINT))
    _, stderr = launcher.communicate(timeout=600)
    saved = RunStore(ctrl_c).checkpoint_steps()[-1]
    assert launcher.returncode == 130 and steps_of(ctrl_c) == list(range(saved)), stderr[-3000:]
    assert stderr.count("workbench: interrupted") == 1 and f"is saved at step {saved}" in stderr  # once, by rank 0

    killed = tmp_path / "killed"
    launcher = _launch(killed)
    workers = _stop_after_a_step(killed, launcher, lambda p: p.kill())
    launcher.wait(timeout=60)
    deadline = time.monotonic() + 300
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "orphaned workers still running"
    assert lock_held(killed) is False
    saved = RunStore(killed).checkpoint_steps()[-1]
    assert 1 <= saved < 8 and steps_of(killed) == list(range(saved))  # stopped at a step's end, saved there

    for run in (ctrl_c, killed):
        resumed = _launch(run, "--resume")
        assert resumed.wait(timeout=900) == 0, resumed.stderr.read()[-3000:]
        assert _rows(run) == _rows(reference)
    assert all(row["grad_norm"] > 0 for row in _rows(reference))


# --- item 11: a TRL resume is the run as it was configured -----------------------------------------
def test_a_trl_resume_refuses_other_processes_fields_and_presets(tmp_path):
    trl_trainer()
    from workbench.integrations import trl_run

    run = tmp_path / "run"
    store = RunStore(run)
    store.create(RunConfig(**SMALL))
    store.write_backend({"backend": "trl", "processes": 2, "trl_fields": {"logging_first_step": True}})
    with pytest.raises(ConfigError, match=r"processes=1 .*the 2 processes.*--num_processes 2"):
        trl_run.resumed_fields(store, 1, {})
    with pytest.raises(ConfigError, match=r"trl.logging_first_step=False.*\(True, backend.json\)"):
        trl_run.resumed_fields(store, 2, {"logging_first_step": False})
    assert trl_run.resumed_fields(store, 2, {}) == {"logging_first_step": True}  # kept, not overwritten
    assert main(["train", "--backend", "trl", "--out", str(run), "--resume", "--preset", "gpu"]) == 2
    assert json.loads((run / "backend.json").read_text())["processes"] == 2


# --- the suite over the engines: one writer, sizes first (items 1 and 7) --------------------------
ENGINES = ["workbench", "trl"]


def start(engine: str, run: Path):
    """A writer of a new run on ``engine``, before its first step; and how to let go of it."""
    if engine == "trl":
        trainer = trl_trainer()(RunConfig(**SMALL), run, steps=2)
        return trainer, trainer.writer.close
    trainer = Trainer(RunConfig(**SMALL), out_dir=run)
    return trainer, trainer.close


@pytest.mark.parametrize("engine", ENGINES)
def test_a_second_writer_is_refused_while_a_run_lives(engine, tmp_path):
    run = tmp_path / "run"
    _, close = start(engine, run)
    assert lock_held(run) is True  # what a dashboard following the run reads: a writer holds it
    for other in ENGINES:  # whichever engine the second writer is, the holder is named
        with pytest.raises(RunLockedError, match=rf"{run} is being written by pid {os.getpid()}"):
            RunWriter.reopen(run, engine=other)
    with pytest.raises(ConfigError, match="out_dir=.*holds a run"):
        start(engine, run)
    close()
    assert lock_held(run) is False


@pytest.mark.parametrize("engine", ENGINES)
def test_sizes_are_checked_before_the_adapter_is_built(engine, tmp_path, monkeypatch):
    from workbench.models import budget

    monkeypatch.setattr(budget, "available_bytes", lambda device: 1)  # a machine with no memory free
    with pytest.raises(ConfigError, match="check_memory=True.*one step needs at least"):
        start(engine, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "pair, says",
    [
        ("use_vllm=no", "trl.use_vllm='no' is not allowed: a value of GRPOConfig's type for use_vllm: bool"),
        ("use_vllm=off", "trl.use_vllm='off'"),
        ("output_dir=elsewhere", "trl.output_dir='elsewhere' is not allowed: a GRPOConfig field the run's config"),
        ("generation_kwargs=3", "trl.generation_kwargs=3 is not allowed"),
        ("generation_kwargs=text", "trl.generation_kwargs='text' is not allowed: a mapping"),
        ("use_vllm=true", "trl.use_vllm=True is not allowed: false here: vLLM is not installed"),
    ],
)
def test_trl_fields_are_typed_and_refused_before_the_run_directory_exists(tmp_path, capsys, pair, says):
    trl_trainer()
    if pair == "use_vllm=true" and __import__("importlib").util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    code = main(["train", "--backend", "trl", "--steps", "1", "--out", str(tmp_path / "run"), "--trl", pair, *SMALL_SET])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"workbench: {says}") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_a_damaged_trl_checkpoint_is_named(tmp_path):
    """A checkpoint written by the TRL backend without TRL's files is refused by name on resume."""
    trl_trainer()
    from workbench.integrations import trl_run

    run = tmp_path / "run"
    trainer = Trainer(RunConfig(**SMALL), out_dir=run)  # a workbench checkpoint: no trl/ inside
    trainer.close()
    with pytest.raises(CheckpointError, match=r"step-0 holds no TRL checkpoint \(trl/\)"):
        trl_run.resume_point(RunStore(run))


# --- item 6 and item 11: a follower of a file rewritten in place, and of a deleted run --------------
def _metrics_file(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def test_a_follower_of_metrics_copied_over_in_place_reads_the_new_history_whole(tmp_path):
    import shutil

    from workbench.run.follower import RunFollower

    run, other = tmp_path / "run", tmp_path / "other"
    RunStore(run).create(RunConfig(**SMALL))
    mine = [{"step": s, "reward_mean": 0.1 * s} for s in range(9)]
    theirs = [{"step": s, "reward_mean": 0.5 + 0.01 * s} for s in range(12)]
    (run / "metrics.jsonl").write_bytes(_metrics_file(mine))
    (other / "metrics.jsonl").parent.mkdir()
    (other / "metrics.jsonl").write_bytes(_metrics_file(theirs))
    follower = RunFollower(run)
    assert [r["reward_mean"] for r in follower.poll().rows] == [r["reward_mean"] for r in mine]
    shutil.copyfile(other / "metrics.jsonl", run / "metrics.jsonl")  # cp: the same file, rewritten in place
    update = follower.poll()
    assert update.restarted and update.rows == theirs  # one run's history, step 9 included
    shutil.rmtree(run)
    follower.poll()
    assert follower.describe() == f"the run directory {run} is gone (deleted or moved) after step 11"


def test_a_prompt_longer_than_the_context_is_refused_before_a_trl_run_is_written(tmp_path):
    engine = trl_trainer()
    data = tmp_path / "long.jsonl"
    rows = [{"prompt": "1+" * 1000 + f"{i}=", "answer": 1000 + i} for i in range(40)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(ConfigError, match=r"max_completion_length=8 is not allowed: at most 0: the longest prompt"):
        engine(RunConfig(**{**SMALL, "task": str(data)}), tmp_path / "run", steps=1)
    assert not (tmp_path / "run").exists()


# --- the suite over the engines: readers never write, damaged lines set aside on resume ---------------
def train(engine: str, run: Path, steps: int, resume: bool = False) -> None:
    if engine == "trl":
        trl_trainer()(RunConfig(**SMALL), run, steps=steps, resume=resume).train()
        return
    trainer = Trainer.resume(run) if resume else Trainer(RunConfig(**SMALL), out_dir=run)
    trainer.run(steps - trainer.step_index, progress=False)
    trainer.close()


def files_digest(run: Path) -> dict[str, bytes]:
    readers_own = {".lock", "eval.json", ".eval.json.lock"}  # eval's entry and its lock, the writer's lock
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in run.rglob("*") if p.is_file()
            and p.name not in readers_own}


@pytest.mark.parametrize("engine", ENGINES)
def test_readers_never_write_and_a_resume_sets_a_damaged_line_aside(engine, tmp_path):
    run = tmp_path / "run"
    train(engine, run, 2)
    before = files_digest(run)
    assert main(["eval", str(run), "--n-samples", "2", "--num-prompts", "2"]) == 0
    assert files_digest(run) == before and "step-2" in RunStore(run).read_evaluations()
    with open(run / "metrics.jsonl", "ab") as metrics:
        metrics.write(b"garbage from an editor\n")
    with pytest.warns(UserWarning, match="line 3"):
        train(engine, run, 3, resume=True)
    assert steps_of(run) == [0, 1, 2]
    assert "garbage from an editor" in (run / "metrics.jsonl.corrupt").read_text()


def test_an_exception_inside_a_trl_step_leaves_a_run_that_resumes_exactly(tmp_path):
    engine = trl_trainer()
    # an entropy bonus moves the adapter even when a group's rewards are all equal
    cfg = RunConfig(**SMALL, entropy_coef=0.05, checkpoint_every=2)

    class FailsAtStep3(engine):
        def reward(self, *args, **kwargs):
            if self.state.global_step == 3:
                raise RuntimeError("a reward function that fails")
            return super().reward(*args, **kwargs)

    engine(cfg, tmp_path / "straight", steps=4).train()
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="a reward function that fails"):
        FailsAtStep3(cfg, run, steps=4).train()
    assert lock_held(run) is False and RunStore(run).checkpoint_steps() == [0, 2] and steps_of(run) == [0, 1, 2]
    engine(cfg, run, steps=4, resume=True).train()
    assert _rows(run) == _rows(tmp_path / "straight")
    assert all(row["grad_norm"] > 0 for row in _rows(run))  # every step moved the adapter: resumed exactly


def test_a_trl_run_of_two_updates_a_batch_counts_steps_as_the_workbench_and_resumes_exactly(tmp_path):
    """Poly-EPO takes two updates a batch: TRL counts each as an optimizer step, the run counts one
    step a batch (rows, rollouts, checkpoints), and a resume continues as if never stopped."""
    engine = trl_trainer()
    # an entropy bonus moves the adapter even when a group's rewards are all equal
    cfg = RunConfig(**SMALL, method="poly_epo", method_options={"set_size": 2}, checkpoint_every=1, entropy_coef=0.05)
    assert cfg.num_iterations == 2
    engine(cfg, tmp_path / "straight", steps=3).train()
    run = tmp_path / "run"
    engine(cfg, run, steps=2).train()
    store = RunStore(run)
    assert steps_of(run) == [0, 1] and store.rollout_steps() == [0, 1] and store.checkpoint_steps() == [0, 1, 2]
    engine(cfg, run, steps=3, resume=True).train()
    assert steps_of(run) == [0, 1, 2]
    assert _rows(run) == _rows(tmp_path / "straight")
    assert any(row["grad_norm"] > 0 for row in _rows(run))  # the adapter moved: the equality says something
