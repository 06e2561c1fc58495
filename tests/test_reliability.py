"""Reliability and security (issue 8): bad input, faults and untrusted text, with nothing lost.

One test (or one parametrized family) per row of docs/reliability.md. Every training test runs
on the embedded model with a tiny step (2 prompts x 4 responses x 8 tokens).
"""

from __future__ import annotations

import ast
import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import pickle
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench import PRESETS, ConfigError, Policy, PolicyLoadError, RunConfig, Trainer, methods, tasks
from workbench.run.store import CheckpointError, RunStore
from workbench.tasks import Coins, Countdown, DatasetTask, Problem, RewardFunctionError, RewardFunctionTask, Score
from workbench.tasks.dataset import parse_exact_answer, parse_number_answer, reference_answer

REPO = Path(__file__).resolve().parent.parent
METHOD_OPTIONS = {"eepo": {"gate": "always"}, "poly_epo": {"set_size": 2}, "passk_training": {"k": 2}}  # the unlearning pass always runs
SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
SCRIPT_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def tiny_config(method: str = "grpo", **changes) -> RunConfig:
    # one thread: on a busy 2-core machine two spinning OpenMP threads can make a step 50x slower
    return RunConfig(method=method, num_prompts=2, num_generations=4, max_completion_length=8, seed=3,
                     method_options=METHOD_OPTIONS.get(method, {}), threads=1, **changes)


def tree_digest(root: Path) -> str:
    """Names, contents and modification times of everything under ``root`` but the writer lock."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.name != ".lock"):  # the writer lock is not run data
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(b"dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).digest())
        digest.update(str(path.stat().st_mtime_ns).encode())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A run directory after 2 steps with checkpoints at steps 1 and 2 (copy it before changing it)."""
    run = tmp_path_factory.mktemp("base") / "run"
    trainer = Trainer(tiny_config(), out_dir=run)
    for _ in range(2):
        trainer.step()
        trainer.save_checkpoint()
    return run


@pytest.fixture
def run_copy(base_run, tmp_path) -> Path:
    return Path(shutil.copytree(base_run, tmp_path / "run"))


# =============================================================================================
# Bad input gets a clear error
# =============================================================================================
# (wrong type, out of range) for every RunConfig field; None where a field has no range
BAD_VALUES = {
    "model": (123, "  "),
    "task": (5, "chess"),
    "method": (["grpo"], "ppo"),
    "seed": ("0", -1),
    "num_prompts": (2.0, 0),
    "num_generations": ("8", 1),
    "max_completion_length": (None, 0),
    "temperature": ("hot", 0.0),
    "top_p": ([0.5], 1.5),
    "top_k": (1.5, -1),
    "learning_rate": ("1e-3", 2.0),
    "weight_decay": (None, -0.1),
    "max_grad_norm": ("1", 0.0),
    "num_iterations": (1.5, 0),
    "gradient_accumulation_steps": ("2", 0),
    "micro_batch_tokens": (1.5, 0),
    "loss_type": (3, "mean"),
    "scale_rewards": (True, "std"),
    "epsilon": ("0.2", 0.0),
    "epsilon_high": ("x", -0.1),
    "beta": ("0", -0.1),
    "entropy_coef": ("0", -1.0),  # None is the method's setting
    "top_entropy_quantile": ("x", 0.0),
    "lora_r": (8.0, 0),
    "lora_alpha": ("16", 0),
    "lora_dropout": ("0", 1.0),
    "target_modules": (7, []),
    "track_kl": ("yes", 1),
    "pivot_z_threshold": ("1", math.inf),
    "save_rollouts": ("no", 0),
    "report_to": (7, "mlflow"),
    "checkpoint_every": (2.5, -1),
    "device": (0, "tpu"),
    "dtype": (32, "int8"),
    "gradient_checkpointing": ("true", 1),
    "threads": ("4", -1),
    "check_memory": ("yes", 1),
    "method_options": ([("alpha", 1)], {"no_such_option": 1}),
}
FIELDS = [f.name for f in dataclasses.fields(RunConfig)]
FLOAT_FIELDS = [f.name for f in dataclasses.fields(RunConfig) if "float" in str(f.type)]


def test_every_config_field_has_bad_values_below():
    assert set(FIELDS) <= set(BAD_VALUES), f"add bad values for {sorted(set(FIELDS) - set(BAD_VALUES))}"


@pytest.mark.parametrize("field,value", [(f, v) for f in BAD_VALUES if f in FIELDS for v in BAD_VALUES[f]],
                         ids=lambda x: repr(x)[:20])
def test_a_bad_value_of_any_field_names_the_field_the_value_and_what_is_allowed(field, value):
    with pytest.raises(ConfigError) as info:
        RunConfig(**{field: value})
    error = info.value
    assert error.field.split(".")[0] == field and error.allowed.strip()
    shown = (repr(error.value), f"{error.value!r} ({type(error.value).__name__})")  # the type when it is the problem
    assert str(error) in [f"{error.field}={v} is not allowed: {error.allowed}" for v in shown]
    assert error.value is value or error.field == "method_options.no_such_option"


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        RunConfig(**{field: value})


def test_a_field_reassigned_after_construction_is_checked_by_the_trainer():
    cfg = tiny_config()
    cfg.num_generations = 1  # dataclass fields can be reassigned; Trainer validates again
    with pytest.raises(ConfigError, match="num_generations=1"):
        Trainer(cfg)


@pytest.mark.parametrize("method", ["eepo", "policy_split"])
@pytest.mark.parametrize("groups", [3, 5])
def test_odd_group_size_is_refused_for_two_halves(method, groups):
    with pytest.raises(ConfigError, match=f"num_generations={groups} is not allowed: an even number") as info:
        RunConfig(method=method, num_generations=groups)
    assert info.value.field == "num_generations"


@pytest.mark.parametrize("set_size", [4, 5, 1])
def test_poly_epo_set_size_must_be_smaller_than_the_group(set_size):
    with pytest.raises(ConfigError, match=f"set_size={set_size} is not allowed: an integer from 2 to "
                                          "num_generations - 1 = 3") as info:
        RunConfig(method="poly_epo", num_generations=4, method_options={"set_size": set_size})
    assert info.value.field == "method_options.set_size"


NUMERIC_OPTIONS = [(name, key) for name in methods.names() for key, default in methods.get(name).defaults.items()
                   if isinstance(default, (int, float)) and not isinstance(default, bool)]


@pytest.mark.parametrize("method,key", NUMERIC_OPTIONS)
@pytest.mark.parametrize("value", [math.nan, "0.1", True])
def test_numeric_method_options_refuse_nan_text_and_bools(method, key, value):
    with pytest.raises(ConfigError) as info:
        RunConfig(method=method, num_generations=8, method_options={key: value})
    assert info.value.field == f"method_options.{key}"


def test_unknown_method_task_and_preset_list_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        RunConfig(method="ppo")
    assert all(name in str(info.value) for name in methods.names())
    with pytest.raises(ConfigError) as info:
        RunConfig(task="chess")
    assert all(name in str(info.value) for name in tasks.names())
    with pytest.raises(ValueError, match="allowed: coins, countdown"):
        tasks.get("chess")
    with pytest.raises(ConfigError) as info:
        RunConfig.preset("nope")
    assert all(name in str(info.value) for name in PRESETS)
    with pytest.raises(ConfigError, match=r"method_options.alpha.*its options: none"):
        RunConfig(method="grpo", method_options={"alpha": 0.3})


@pytest.mark.parametrize("model", ["/no/such/model", "./no-such-model", "~/no-such-model"])
def test_a_missing_model_path_fails_before_the_run_directory_exists(tmp_path, model):
    with pytest.raises(PolicyLoadError, match=re.escape(f"model path {model!r} does not exist")):
        Trainer(tiny_config(model=model), out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_dataset_without_the_named_column_lists_the_columns(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"question": f"q{i}", "solution": str(i)}) + "\n" for i in range(5)))
    with pytest.raises(ValueError, match=r"column 'prompt' is missing.*available columns: 'question', 'solution'"):
        Trainer(tiny_config(task=str(data)), out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match=r"column 'answer' is missing.*'question', 'solution'"):
        DatasetTask.from_file(data, prompt_column="question")


def test_yaml_with_unknown_keys_or_bad_syntax_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("num_generation: 8\nlearning_rat: 1e-3\n")
    with pytest.raises(ConfigError, match="learning_rat.*an unknown key; valid keys:.*learning_rate") as info:
        RunConfig.from_yaml(path)
    assert all(name in str(info.value) for name in FIELDS)
    path.write_text("num_generations: [8\n")
    with pytest.raises(ConfigError, match=r"config=.*c.yaml.*valid YAML"):
        RunConfig.from_yaml(path)
    path.write_text("- grpo\n")
    with pytest.raises(ConfigError, match="a YAML mapping"):
        RunConfig.from_yaml(path)


def test_a_failing_config_never_touches_an_existing_run(run_copy, tmp_path, capsys):
    from workbench.cli import main

    before = tree_digest(run_copy)
    attempts = [
        lambda: Trainer(tiny_config(), out_dir=run_copy),  # valid, but the directory holds a run
        lambda: Trainer(tiny_config(), out_dir=run_copy, num_generations=3, method="eepo"),
        lambda: Trainer.resume(run_copy, temperature=-1.0),
        lambda: Trainer.resume(run_copy, method_options={"alpha": 0.3}),
        lambda: Trainer(RunConfig.from_yaml(_write(tmp_path / "bad.yaml", "top_p: 2\n")), out_dir=run_copy),
    ]
    for attempt in attempts:
        with pytest.raises(ConfigError):
            attempt()
        assert tree_digest(run_copy) == before
    assert main(["train", "--out", str(run_copy), "--set", "num_generations=1"]) == 2
    assert "num_generations=1 is not allowed" in capsys.readouterr().err
    assert main(["train", "--out", str(run_copy), "--steps", "1"]) == 2
    assert "holds a run (its last checkpoint is at step 2)" in capsys.readouterr().err
    assert tree_digest(run_copy) == before

    trainer = Trainer.resume(run_copy)  # rewrites metrics.jsonl (same rows): digest again after it
    after_resume = tree_digest(run_copy)
    for bad in ({"temperature": -1.0}, {"num_generations": 8}, {"method_options": {"alpha": 1}}):
        with pytest.raises(ConfigError):
            trainer.set_live(**bad)
    with pytest.raises(ConfigError, match="out_dir"):
        trainer.fork(out_dir=run_copy, learning_rate=1e-3)
    with pytest.raises(ConfigError, match="fork"):
        trainer.fork(out_dir=tmp_path / "branch", lora_r=4)
    assert tree_digest(run_copy) == after_resume and not (tmp_path / "branch").exists()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# =============================================================================================
# User reward functions that fail
# =============================================================================================
def raises(prompts, completions, **_):
    raise ValueError("cannot score this")


def wrong_count(prompts, completions, **_):
    return [1.0] * (len(completions) - 1)


def returns_nan(prompts, completions, **_):
    return [math.nan] * len(completions)


@pytest.mark.parametrize("func,problem,row", [(raises, "raised ValueError: cannot score this", 0),
                                              (wrong_count, "returned 7 values for 8 completions", 7),
                                              (returns_nan, "returned nan, not a number", 0)])
def test_a_failing_reward_function_names_the_prompt_and_completion(tmp_path, func, problem, row):
    trainer = Trainer(tiny_config(), reward_funcs=func, out_dir=tmp_path / "run")
    seen = []
    trainer.subscribe(lambda phase: seen.append(phase.batch) if phase.name == "sample" else None)
    adapter = trainer.policy.adapter_state()
    with pytest.raises(RewardFunctionError) as info:
        trainer.step()
    message, batch = str(info.value), seen[0]
    assert f"reward function {func.__name__!r} {problem}" in message
    assert f"first offending prompt: {batch.problems[int(batch.group[row])].prompt!r}" in message
    assert f"completion: {batch.text[row]!r}" in message and "reward_errors='zero'" in message
    assert all(torch.equal(adapter[k], v) for k, v in trainer.policy.adapter_state().items())
    assert trainer.step_index == 0 and RunStore(tmp_path / "run").read_metrics() == []


def code_sum(text: str) -> int:
    return sum(map(ord, text))


def fails_on_odd_sums(prompts, completions, **_):
    if any(code_sum(c) % 2 for c in completions):
        raise ValueError("odd")
    return [1.0] * len(completions)


def nan_on_multiples_of_three(prompts, completions, **_):
    return [math.nan if code_sum(c) % 3 == 0 else 0.5 for c in completions]


def test_reward_errors_zero_scores_failures_0_and_counts_them_in_metrics_jsonl(tmp_path):
    trainer = Trainer(tiny_config(), reward_funcs=[fails_on_odd_sums, nan_on_multiples_of_three],
                      reward_errors="zero", out_dir=tmp_path / "run")
    result = trainer.step()
    sums = [code_sum(t) for t in result.batch.text]
    failed = [s % 2 == 1 or s % 3 == 0 for s in sums]
    expected = sum(s % 2 for s in sums) + sum(s % 3 == 0 for s in sums)  # one per function and completion
    assert 0 < sum(failed) < len(sums), "some completions should fail and some not"
    assert result.metrics["reward_errors"] == expected
    assert [float(r) for r in result.batch.rewards] == [0.0 if bad else 1.5 for bad in failed]
    assert RunStore(tmp_path / "run").read_metrics()[0]["reward_errors"] == expected
    assert trainer.step().metrics["reward_errors"] >= 0  # per step, not cumulative
    assert trainer.task.error_count >= expected
    wrapped = RewardFunctionTask(Countdown(), wrong_count, reward_errors="zero")
    problems = Countdown().prompts("train", 3)
    assert [s.reward for s in wrapped.score_batch(problems, ["a", "b", "c"])] == [0.0, 0.0, 0.0]
    assert wrapped.error_count == 3


# =============================================================================================
# A truncated or corrupt checkpoint
# =============================================================================================
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x55
    path.write_bytes(bytes(data))


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def _delete(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize("name", ["adapter.safetensors", "optimizer.pt", "state.json"])
@pytest.mark.parametrize("damage", [_truncate, _empty, _flip_a_byte, _garbage, _delete], ids=lambda f: f.__name__[1:])
def test_a_damaged_checkpoint_file_is_named_and_the_run_left_as_it_was(run_copy, name, damage):
    damage(run_copy / "checkpoints" / "step-2" / name)
    before = tree_digest(run_copy)
    with pytest.raises(CheckpointError) as info:
        Trainer.resume(run_copy)
    assert name in str(info.value)
    assert "earlier steps: 0, 1; rename it to broken-step-2 to resume from step 1" in str(info.value)
    assert tree_digest(run_copy) == before


def test_a_checkpoint_of_another_adapter_shape_is_named(run_copy, tmp_path):
    other = Trainer(tiny_config(lora_r=4), out_dir=tmp_path / "other")
    other.step()
    foreign = other.save_checkpoint()
    target = run_copy / "checkpoints" / "step-2"
    for name in ("adapter.safetensors", "optimizer.pt"):  # a consistent checkpoint, digests and all
        shutil.copy(foreign / name, target / name)
    state = json.loads((foreign / "state.json").read_text())
    (target / "state.json").write_text(json.dumps({**state, "step": 2}))
    before = tree_digest(run_copy)
    with pytest.raises(CheckpointError, match="adapter.safetensors does not fit this model and adapter"):
        Trainer.resume(run_copy)
    assert tree_digest(run_copy) == before


def test_the_command_line_prints_the_error_and_exits_2(run_copy, tmp_path, capsys):
    from workbench.cli import main

    _truncate(run_copy / "checkpoints" / "step-2" / "optimizer.pt")
    before = tree_digest(run_copy)
    assert main(["train", "--resume", "--out", str(run_copy), "--steps", "3"]) == 2
    assert "step-2/optimizer.pt is truncated or corrupt" in capsys.readouterr().err
    assert tree_digest(run_copy) == before
    assert main(["train", "--out", str(tmp_path / "new"), "--set", "model=/no/such/model"]) == 2
    assert "model path '/no/such/model' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_after_moving_the_damaged_checkpoint_away_resume_takes_the_earlier_one(run_copy):
    _truncate(run_copy / "checkpoints" / "step-2" / "optimizer.pt")
    shutil.move(run_copy / "checkpoints" / "step-2", run_copy / "damaged-step-2")
    trainer = Trainer.resume(run_copy)
    assert trainer.step_index == 1 and [r["step"] for r in trainer.records] == [0]


# =============================================================================================
# SIGKILL in the middle of writing: real child processes, killed where we choose
# =============================================================================================
CHILD = r"""
import os, pathlib, shutil, sys, time
import torch
run_dir, point = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
from workbench import Trainer

def kill_me_here():
    print("KILL-POINT", flush=True)
    time.sleep(600)
    os._exit(3)  # never reached: the parent sends SIGKILL

def keep_half(path):
    data = pathlib.Path(path).read_bytes()
    pathlib.Path(path).write_bytes(data[: len(data) // 2])

trainer = Trainer.resume(run_dir)  # at step 1, from checkpoints/step-1
if point == "adapter":  # half of adapter.safetensors written
    save = trainer.policy.save_adapter
    trainer.policy.save_adapter = lambda path: (save(path), keep_half(path), kill_me_here())
elif point == "optimizer":  # half of optimizer.pt written
    save = torch.save
    torch.save = lambda obj, f, *a, **k: (save(obj, f, *a, **k), keep_half(f), kill_me_here())
elif point == "state":  # half of state.json written
    write_text = pathlib.Path.write_text
    def half_state(self, text, *a, **k):
        if self.name != "state.json":
            return write_text(self, text, *a, **k)
        write_text(self, text[: len(text) // 2])
        kill_me_here()
    pathlib.Path.write_text = half_state
elif point == "rename":  # every file written, not yet renamed into place
    replace = os.replace
    def stop_before_rename(src, dst):
        if pathlib.Path(src).name.startswith(".tmp-step"):
            kill_me_here()
        return replace(src, dst)
    os.replace = stop_before_rename
elif point == "replace":  # re-saving step 1 over itself: killed while the old copy is being deleted
    rmtree = shutil.rmtree
    def delete_one_file_then_stop(path, *a, **k):
        path = pathlib.Path(path)
        if path.is_dir() and path.name.lstrip(".").startswith(("step-", "old-step-")):
            next(path.iterdir()).unlink()
            kill_me_here()
        return rmtree(path, *a, **k)
    shutil.rmtree = delete_one_file_then_stop
    trainer.save_checkpoint()
elif point == "metrics":  # half of step 1's metrics line written
    def half_line(metrics):
        line = (__import__("json").dumps(metrics) + "\n").encode()
        with open(trainer.store.metrics_path, "ab") as f:
            f.write(line[: len(line) // 2])
        kill_me_here()
    trainer.store.append_metrics = half_line
elif point == "mid-step":  # step 1 recorded, killed while sampling step 2 (metrics ahead of the checkpoint)
    trainer.step()
    trainer.subscribe(lambda phase: kill_me_here())
trainer.step()
trainer.save_checkpoint()
print("NOT KILLED", flush=True)
"""
KILL_POINTS = ["adapter", "optimizer", "state", "rename", "replace", "metrics", "mid-step"]


def _wait_for_kill_point(child: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([child.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = child.stdout.readline()
        if not line:  # the child exited
            return False
        if line.strip() == "KILL-POINT":
            return True
    return False


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory):
    """{kill point: (run directory, exit status)} after SIGKILL of a child at that point.

    Each run starts with checkpoints/step-1 and one metrics line; the children run in parallel."""
    root = tmp_path_factory.mktemp("killed")
    start = Trainer(tiny_config(), out_dir=root / "start")
    start.step()
    start.save_checkpoint()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    children = {}
    for point in KILL_POINTS:
        run = Path(shutil.copytree(root / "start", root / point))
        children[point] = (run, subprocess.Popen([sys.executable, "-c", CHILD, str(run), point], cwd=REPO, env=env,
                                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = {}
    for point, (run, child) in children.items():
        reached = _wait_for_kill_point(child, timeout=300)
        if reached:
            os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
        results[point] = (run, child.returncode if reached else
                          f"kill point not reached: {child.stderr.read()[-2000:]}")
    return results


@pytest.fixture(scope="module")
def uninterrupted():
    trainer = Trainer(tiny_config())
    trainer.run(3, progress=False)
    return trainer.records


@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_mid_write_leaves_the_previous_checkpoint_and_resume_works(killed_runs, uninterrupted, point):
    run, status = killed_runs[point]
    assert status == -signal.SIGKILL, status
    store = RunStore(run)
    assert store.checkpoint_steps() == [0, 1]  # no half-written checkpoint is listed
    store.load_checkpoint()  # and the previous one still loads, complete
    trainer = Trainer.resume(run)
    assert trainer.step_index == 1 and [r["step"] for r in trainer.records] == [0]
    trainer.run(2, progress=False)
    lines = store.metrics_path.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 1, 2]  # none missing, none twice
    for resumed, straight in zip(store.read_metrics(), uninterrupted):
        for key in ("reward_mean", "entropy_mean", "loss", "grad_norm"):
            assert resumed[key] == pytest.approx(straight[key], abs=1e-6), key
    assert store.checkpoint_steps() == [0, 1, 3]
    assert not [p for p in store.checkpoints_dir.iterdir() if p.name.startswith(".")]  # the dead child's temporaries


def test_resume_keeps_one_metrics_row_per_step(run_copy):
    lines = (run_copy / "metrics.jsonl").read_text().splitlines()
    again = {**json.loads(lines[0]), "reward_mean": 0.123}  # step 0 written a second time, later
    (run_copy / "metrics.jsonl").write_text("\n".join([*lines, json.dumps(again)]) + "\n")
    trainer = Trainer.resume(run_copy)
    assert [r["step"] for r in trainer.records] == [0, 1] and trainer.records[0]["reward_mean"] == 0.123
    assert [json.loads(line)["step"] for line in (run_copy / "metrics.jsonl").read_text().splitlines()] == [0, 1]


def test_a_metrics_line_that_fails_to_write_is_taken_back_out(tmp_path, monkeypatch):
    import workbench.run.store

    trainer = Trainer(tiny_config(), out_dir=tmp_path / "run")
    trainer.step()
    size = trainer.store.metrics_path.stat().st_size
    real_write = os.write

    def disk_full(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(workbench.run.store.os, "write", disk_full)
    with pytest.raises(OSError, match="No space"):
        trainer.step()
    monkeypatch.undo()
    assert trainer.store.metrics_path.stat().st_size == size and trainer.step_index == 1
    trainer.step()
    assert [r["step"] for r in trainer.store.read_metrics()] == [0, 1]


# =============================================================================================
# An exception or KeyboardInterrupt in any phase of any method
# =============================================================================================
def snapshot(trainer) -> dict:
    params = trainer.policy.trainable_parameters()
    return {
        "adapter": {k: v.detach().clone() for k, v in params.items()},
        "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
        "param_ids": [id(p) for p in params.values()],
        "optimizer_param_ids": [id(p) for g in trainer.optimizer.param_groups for p in g["params"]],
        "counters": (trainer.step_index, len(trainer.records), trainer.nan_skips),
        "metrics_lines": trainer.store.metrics_path.read_text() if trainer.store else None,
    }


def assert_same(before: dict, after: dict, fault: str) -> None:
    assert before["adapter"].keys() == after["adapter"].keys(), fault
    for name, value in before["adapter"].items():
        assert torch.equal(value, after["adapter"][name]), f"{fault}: adapter {name} changed"
    a, b = before["optimizer"], after["optimizer"]
    assert a["param_groups"] == b["param_groups"], fault
    assert a["state"].keys() == b["state"].keys(), fault
    for index, state in a["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][index][key])), \
                f"{fault}: optimizer {key} of parameter {index} changed"
    assert before["param_ids"] == after["param_ids"] == after["optimizer_param_ids"], f"{fault}: parameters swapped"
    assert before["counters"] == after["counters"], fault
    assert before["metrics_lines"] == after["metrics_lines"], f"{fault}: metrics.jsonl changed"


@contextlib.contextmanager
def patched(obj, name: str, wrapper_of):
    """Replace ``obj.name`` by ``wrapper_of(original)`` on the instance; put back on exit."""
    had, old = name in vars(obj), vars(obj).get(name)
    setattr(obj, name, wrapper_of(getattr(obj, name)))
    try:
        yield
    finally:
        if had:
            setattr(obj, name, old)
        else:
            delattr(obj, name)


def failing_on_call(nth: int, error: BaseException):
    def wrapper_of(original):
        calls = 0

        def wrapper(*args, **kwargs):
            nonlocal calls
            calls += 1
            if calls == nth:
                raise error
            return original(*args, **kwargs)
        return wrapper
    return wrapper_of


def counting(counts: Counter, key: str):
    def wrapper_of(original):
        def wrapper(*args, **kwargs):
            counts[key] += 1
            return original(*args, **kwargs)
        return wrapper
    return wrapper_of


# the work inside phases: (label, the object holding it, attribute)
CALLS = {
    "sampling": lambda t: (t.sampler, "generate"),
    "forward pass": lambda t: (t.policy, "token_logprobs"),
    "scoring": lambda t: (t, "score"),
    "advantages": lambda t: (t.method, "advantages"),
    "optimizer step": lambda t: (t.optimizer, "step"),
    "method metrics": lambda t: (t.method, "extra_metrics"),
    "rollouts file": lambda t: (t.store, "write_rollouts"),
    "metrics line": lambda t: (t.store, "append_metrics"),
}


def probe(trainer) -> tuple[list[str], Counter]:
    """The phase names of a step and how often each call runs in it; the step is then
    abandoned after its update (closing the generator), which must restore everything too."""
    counts: Counter = Counter()
    before = trainer.policy.adapter_state()
    with contextlib.ExitStack() as stack:
        for label, where in CALLS.items():
            stack.enter_context(patched(*where(trainer), counting(counts, label)))
        names, step = [], trainer.phases()
        for phase in step:
            names.append(phase.name)
            if phase.name == "update":
                moved = trainer.policy.adapter_state()
                assert any(not torch.equal(before[k], moved[k]) for k in before), "the update must move the adapter"
                break
        step.close()
    return names, counts


class ParityTask:
    """Countdown prompts with a reward every completion can earn (its character codes sum to an
    odd number), so groups have reward spread and every update moves the adapter."""

    name = "parity"

    def __init__(self):
        self.base = Countdown()

    def prompts(self, split, n, seed=0):
        return self.base.prompts(split, n, seed)

    def score(self, problem, completion):
        total = code_sum(completion)
        return Score(float(total % 2), str(total % 5), str(total % 3), parsed=True)


def faults(names: list[str], counts: Counter) -> list[tuple]:
    """Every phase boundary, with a KeyboardInterrupt thrown in and an exception from a
    subscriber; every call inside a phase, alternating KeyboardInterrupt and RuntimeError."""
    out = [("interrupt after", name, None) for name in names]
    out += [("subscriber raises at", name, None) for name in names]
    calls = [(label, nth) for label in CALLS for nth in range(1, max(counts[label], 1) + 1)]
    out += [("fails in", label, nth) for label, nth in calls]
    return out


def inject(trainer, fault: tuple, index: int) -> None:
    kind, where, nth = fault
    if kind == "interrupt after":
        step = trainer.phases()
        for phase in step:
            if phase.name == where:
                with pytest.raises(KeyboardInterrupt):
                    step.throw(KeyboardInterrupt())
                return
        raise AssertionError(f"phase {where} never came")
    if kind == "subscriber raises at":
        def explode(phase):
            if phase.name == where:
                raise RuntimeError(f"subscriber at {where}")
        unsubscribe = trainer.subscribe(explode)
        try:
            with pytest.raises(RuntimeError, match="subscriber at"):
                trainer.step()
        finally:
            unsubscribe()
        return
    error = KeyboardInterrupt() if index % 2 else RuntimeError(f"fault in {where}")
    with patched(*CALLS[where](trainer), failing_on_call(nth, error)):
        with pytest.raises(type(error)):
            trainer.step()


@pytest.mark.parametrize("method", methods.names())
def test_a_fault_anywhere_in_a_step_leaves_adapter_and_optimizer_bit_identical(method, tmp_path):
    cfg = tiny_config(method)
    trainer = Trainer(cfg, task=ParityTask(), out_dir=tmp_path / "run")
    trainer.step()  # the optimizer has moments now
    before = snapshot(trainer)
    names, counts = probe(trainer)
    assert_same(before, snapshot(trainer), "closing the step after its update")
    assert counts["sampling"] >= 1 and counts["forward pass"] >= 1 and counts["optimizer step"] == cfg.num_iterations
    for index, fault in enumerate(faults(names, counts)):
        inject(trainer, fault, index)
        assert_same(before, snapshot(trainer), " ".join(map(str, fault)))
    trainer.step()  # works, and is the step an uninterrupted trainer takes
    reference = Trainer(cfg, task=ParityTask())
    reference.run(2, progress=False)
    state, expected = trainer.policy.adapter_state(), reference.policy.adapter_state()
    assert all(torch.equal(state[k], expected[k]) for k in state)
    for key, value in reference.records[-1].items():
        if key != "step_time" and isinstance(value, float):
            assert trainer.records[-1][key] == pytest.approx(value, abs=1e-6, nan_ok=True), key
    assert [r["step"] for r in trainer.store.read_metrics()] == [0, 1]


def test_a_checkpoint_that_fails_after_the_step_is_recorded_keeps_the_step(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(checkpoint_every=1), task=ParityTask(), out_dir=tmp_path / "run")
    before = trainer.policy.adapter_state()
    monkeypatch.setattr(trainer.store, "save_checkpoint", failing_on_call(1, OSError(28, "No space"))(None))
    with pytest.raises(OSError, match="No space"):
        trainer.step()
    monkeypatch.undo()
    # the step is in metrics.jsonl, so it stays: adapter, step index and history agree with it
    assert trainer.step_index == 1 and [r["step"] for r in trainer.store.read_metrics()] == [0]
    assert any(not torch.equal(before[k], v) for k, v in trainer.policy.adapter_state().items())
    trainer.step()
    assert trainer.store.checkpoint_steps() == [0, 2]
    trainer.close()
    assert Trainer.resume(tmp_path / "run").step_index == 2


def test_resume_takes_the_learning_rate_from_config_yaml(tmp_path):
    trainer = Trainer(tiny_config(), out_dir=tmp_path / "run")
    trainer.step()
    trainer.save_checkpoint()
    trainer.set_live(learning_rate=1e-3)  # rewrites config.yaml; the checkpoint still holds 2e-3
    trainer.close()
    resumed = Trainer.resume(tmp_path / "run")
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [1e-3]


# =============================================================================================
# NaN loss: skipped, recorded, shown
# =============================================================================================
def test_a_nan_loss_is_skipped_recorded_and_shown_in_the_dashboard(tmp_path, monkeypatch):
    from widgets import TrainingDashboard

    trainer = Trainer(tiny_config(), out_dir=tmp_path / "run")
    trainer.step()
    adapter = trainer.policy.adapter_state()
    original = trainer.method.advantages

    def nan_advantages(tr, batch):
        numbers = original(tr, batch)
        batch.token_advantages = batch.token_advantages * math.nan
        return numbers

    monkeypatch.setattr(trainer.method, "advantages", nan_advantages)
    skipped = trainer.step().metrics
    monkeypatch.undo()
    assert skipped["skipped"] == 1.0 and skipped["nan_skips"] == 1.0 and math.isnan(skipped["loss"])
    assert all(torch.equal(adapter[k], v) for k, v in trainer.policy.adapter_state().items())
    after = trainer.step().metrics
    assert after["skipped"] == 0.0 and after["nan_skips"] == 1.0 and math.isfinite(after["loss"])
    rows = RunStore(tmp_path / "run").read_metrics()
    assert [(r["skipped"], r["nan_skips"], r["loss"] is None) for r in rows] == [
        (0.0, 0.0, False), (1.0, 1.0, True), (0.0, 1.0, False)]  # the NaN is kept as null, not averaged in

    trainer.save_checkpoint()
    trainer.close()
    for source in (trainer, Trainer.resume(tmp_path / "run")):  # live, and read back from metrics.jsonl
        dashboard = TrainingDashboard(source, min_interval=0)
        try:
            marker = dashboard.trace("skipped_update")
            assert marker.visible and list(marker.x) == [1]
            assert list(marker.y) == pytest.approx([skipped["reward_mean"]])
            assert "1 update skipped (NaN/inf loss) at step 1" in dashboard.status.value
        finally:
            dashboard.close()
    assert Trainer.resume(tmp_path / "run", read_only=True).nan_skips == 1  # the resumed trainer above still writes


# =============================================================================================
# Untrusted text: verifiers and parsers
# =============================================================================================
FUZZ = settings(max_examples=2000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
ANSWER_ALPHABET = "0123456789,.+-eE#: \n\\{}$%Answerboxd()*/="
MARKED = st.from_regex(r"(?:.{0,20}(?:####|[Aa]nswer\s*:|\\boxed\{))*"  # answer markers, repeated
                       r"[-+]?[0-9,]{0,14}(?:\.[0-9]{0,8})?(?:[eE][-+]?[0-9]{1,5})?.{0,10}", fullmatch=True)
TEXTS = st.one_of(st.text(), st.text(alphabet=ANSWER_ALPHABET),
                  st.text(alphabet=ANSWER_ALPHABET, min_size=100, max_size=600), MARKED,
                  st.text(alphabet=st.characters(categories=["Nd", "Pd", "Sm", "Zs", "Cc"])))


@FUZZ
@given(TEXTS)
def test_number_parser_never_raises_and_returns_a_finite_decimal(text):
    value = parse_number_answer(text)
    assert value is None or (isinstance(value, Decimal) and value.is_finite())


@FUZZ
@given(TEXTS)
def test_exact_parser_never_raises_and_returns_text_taken_from_the_completion(text):
    value = parse_exact_answer(text)
    assert value is None or (isinstance(value, str) and value == value.strip() and value)
    if value is not None:
        assert value in text.replace(",", "") or value in text


@FUZZ
@given(st.one_of(TEXTS, st.integers(), st.floats(), st.booleans(), st.none(), st.lists(st.integers(), max_size=3)))
def test_reference_answer_never_raises_on_any_data_value(raw):
    assert isinstance(reference_answer(raw), str)


WRAPPED = RewardFunctionTask(Countdown(), [lambda prompts, completions, **_: [float(len(c) % 3) for c in completions],
                                           lambda prompts, completions, **_: [1 / (len(c) % 2) for c in completions]],
                             reward_errors="zero")
WRAPPED_PROBLEMS = Countdown().prompts("test", 4, seed=0)


@settings(FUZZ, max_examples=500)
@given(st.lists(TEXTS, min_size=4, max_size=4))
def test_the_reward_function_wrapper_never_raises_in_zero_mode(completions):
    scores = WRAPPED.score_batch(WRAPPED_PROBLEMS, completions)
    assert len(scores) == 4 and all(isinstance(s, Score) and math.isfinite(s.reward) for s in scores)


def _verifiers():
    numeric = DatasetTask([{"prompt": f"q{i}", "answer": a} for i, a in enumerate(["42", "-3.5", "1e3"])],
                          test_fraction=0)
    exact = DatasetTask([{"prompt": f"q{i}", "answer": a} for i, a in enumerate(["Paris", "{{7*7}}"])], match="exact",
                        test_fraction=0)
    countdown, coins = Countdown(), Coins()
    return [(countdown, countdown.prompts("test", 3)), (coins, coins.prompts("test", 3)),
            (numeric, numeric.rows("train")), (exact, exact.rows("train")),
            (RewardFunctionTask(countdown, lambda prompts, completions, **_: [0.0] * len(completions)),
             countdown.prompts("test", 2))]


ADVERSARIAL = ["1," * 20000, "#### " * 5000, "\\boxed{" * 5000, "answer:" * 5000, "1+" * 20000, "9" * 100000,
               "-" * 50000 + "1", "1.1." * 20000, "=" * 50000, "1+1=2," * 10000, "1*2=" * 20000, "\x00" * 10000]


def test_verifiers_stay_fast_on_adversarial_text():
    """No backtracking blow-up: 100 kB of repetitive text is scored in well under a second each."""
    for task, problems in _verifiers():
        for text in ADVERSARIAL:
            started = time.perf_counter()
            score = task.score(problems[0], text)
            assert time.perf_counter() - started < 2.0, (task, text[:20])
            assert isinstance(score, Score) and 0.0 <= score.reward <= 1.0


def test_model_output_is_never_evaluated_or_run(tmp_path):
    marker = tmp_path / "ran"
    code = [f"__import__('pathlib').Path({str(marker)!r}).touch()", f"$(touch {marker})", f"`touch {marker}`",
            f"; touch {marker}", f"#### __import__('os').system('touch {marker}')",
            f"Answer: eval(\"open({str(marker)!r}, 'w')\")"]
    templates = ["{{7*7}}", "${7*7}", "#### {{7*7}}", "Answer: <%= 7*7 %>"]
    for task, problems in _verifiers():
        for problem in problems:
            for text in code:
                assert isinstance(task.score(problem, text), Score)
            for text in templates:
                assert task.score(problem, text).answer != "49"  # read as text, never rendered
    assert not marker.exists()
    exact_task, problems = _verifiers()[3]
    assert exact_task.score(problems[1], "{{7*7}}").reward == 1.0  # compared as text


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else (
                f"{getattr(func.value, 'id', '?')}.{func.attr}" if isinstance(func, ast.Attribute) else "?")
            yield name, {k.arg: k.value for k in node.keywords}


def test_the_engine_has_no_eval_shell_pickle_or_unsafe_load():
    """Static: no eval/exec/compile, shell, pickle or unsafe YAML anywhere in workbench/ or widgets/;
    torch.load only with weights_only=True; trust_remote_code never hard-wired on."""
    forbidden = {"eval", "exec", "compile", "os.system", "os.popen", "pickle.load", "pickle.loads", "yaml.load",
                 "yaml.unsafe_load", "yaml.full_load", "marshal.loads"}
    for path in [*(REPO / "workbench").rglob("*.py"), *(REPO / "widgets").rglob("*.py")]:
        for name, keywords in _calls(path):
            where = f"{path.relative_to(REPO)}: {name}"
            assert name not in forbidden, where
            if name == "torch.load":
                assert getattr(keywords.get("weights_only"), "value", None) is True, where
            if "shell" in keywords:
                assert getattr(keywords["shell"], "value", None) is False, where
            if "trust_remote_code" in keywords:
                assert getattr(keywords["trust_remote_code"], "value", None) is not True, where
        assert "jinja2" not in path.read_text(), path


# =============================================================================================
# Untrusted text: the HTML report and every widget
# =============================================================================================
class HostileTask:
    """Countdown problems whose prompts, answers and strategy labels carry HTML payloads."""

    name = "hostile"

    def __init__(self):
        self.base = Countdown()

    def prompts(self, split, n, seed=0):
        return [Problem(p.id, f"{SCRIPT} {p.prompt}", p.answer, p.meta) for p in self.base.prompts(split, n, seed)]

    def score(self, problem, completion):
        return Score(float(len(completion) % 2), IMG, f"{SCRIPT}{len(completion) % 3}", parsed=True)


class HostileTokenizer:
    def decode(self, ids, **_):
        return SCRIPT


def hostile_trainer(method: str, out_dir=None, **kwargs) -> Trainer:
    trainer = Trainer(tiny_config(method), task=HostileTask(), out_dir=out_dir, **kwargs)
    decode = trainer.policy.decode
    trainer.policy.decode = lambda ids, mask: [f"{SCRIPT}{IMG}{text}" for text in decode(ids, mask)]
    return trainer


def rendered_strings(widget) -> list[str]:
    """Every string a browser renders as HTML in a widget tree: HTML widgets' values, descriptions
    that allow HTML, and all text of plotly figures (plotly draws a subset of HTML). Dropdown
    options and Labels are drawn as plain text by ipywidgets and are not included."""
    import ipywidgets as W
    import plotly.graph_objects as go

    out, stack = [], [widget]
    while stack:
        item = stack.pop()
        if isinstance(item, go.FigureWidget):
            out += _strings(item.to_plotly_json())
            continue
        if isinstance(item, (W.HTML, W.HTMLMath)):
            out.append(item.value)
        if getattr(item, "description_allow_html", False):
            out.append(item.description)
        stack += list(getattr(item, "children", ()))
    return out


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)) or (hasattr(value, "dtype") and value.dtype == object):
        return [s for v in value for s in _strings(v)]
    return []


def assert_escaped(strings: list[str], shown: bool = True) -> None:
    raw = [s for s in strings if "<script" in s.lower() or "<img" in s.lower()]
    assert not raw, raw[0][:300]
    if shown:
        assert any(SCRIPT_ESCAPED in s for s in strings)


def test_model_text_renders_as_text_in_the_html_report(tmp_path):
    from workbench.studies.report import write_report

    run = tmp_path / IMG  # a run directory name is shown too (no slash in a file name)
    trainer = hostile_trainer("grpo", out_dir=run)
    trainer.step()
    page = write_report(run).read_text()
    assert "<script>alert(1)" not in page and "<img src=x" not in page
    assert SCRIPT_ESCAPED in page and "&lt;img src=x onerror=alert(1)&gt;" in page


@pytest.fixture(scope="module")
def hostile_grpo():
    trainer = hostile_trainer("grpo")
    trainer.step()
    return trainer


def test_model_text_renders_as_text_in_token_view_and_diversity_panel(hostile_grpo):
    from widgets import DiversityPanel, TokenView

    view = TokenView(hostile_grpo.last_batch, tokenizer=HostileTokenizer())
    assert_escaped(rendered_strings(view))
    panel = DiversityPanel(hostile_grpo, redraw_interval=0)
    try:
        panel.poll()
        strings = rendered_strings(panel)
        assert_escaped(strings)
        assert any("&lt;img src=x onerror=alert(1)&gt;" in s for s in strings)  # the answer key
    finally:
        panel.close()


def test_model_text_renders_as_text_in_the_dashboard_status_and_run_comparison(hostile_grpo, tmp_path):
    from widgets import RunComparison, TrainingDashboard

    def refuses(prompts, completions, **_):
        raise ValueError(f"cannot score {completions[0]}")

    trainer = hostile_trainer("grpo", reward_funcs=refuses)
    dashboard = TrainingDashboard(trainer, min_interval=0)
    try:
        with pytest.raises(RewardFunctionError):
            dashboard.step()
        assert SCRIPT_ESCAPED in dashboard.status.value  # the error names the completion, escaped
        assert_escaped(rendered_strings(dashboard))
    finally:
        dashboard.close()
    run = tmp_path / IMG
    directory_run = Trainer(tiny_config(), out_dir=run)
    directory_run.step()
    comparison = RunComparison({SCRIPT: hostile_grpo, IMG: hostile_grpo})
    by_directory = RunComparison([run])
    assert_escaped(rendered_strings(comparison))
    assert_escaped(rendered_strings(by_directory), shown=False)
    assert any("&lt;img src=x onerror=alert(1)&gt;" in s for s in rendered_strings(by_directory))


def test_model_text_renders_as_text_in_the_eepo_stepper_and_policy_split_view():
    from widgets import EEPOStepper, PolicySplitView

    stepper = EEPOStepper(hostile_trainer("eepo"), tokenizer=HostileTokenizer())
    try:
        while stepper.next_phase().name != "sample_stage2":
            pass
        assert_escaped(rendered_strings(stepper))
    finally:
        stepper.close()
    trainer = hostile_trainer("policy_split")
    view = PolicySplitView(trainer, redraw_interval=0)
    try:
        trainer.step()
        view.poll()
        assert_escaped(rendered_strings(view))
    finally:
        view.close()


# =============================================================================================
# Weights only from safetensors; pickles never run; no remote code unless asked
# =============================================================================================
class RunsCodeWhenUnpickled:
    """A pickle that creates a file when it is loaded: what a malicious .bin or .pt can do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _tiny_files(directory: Path, weights: bool) -> Path:
    from workbench.models.tiny import CHECKPOINT_DIR

    directory.mkdir()
    for path in CHECKPOINT_DIR.iterdir():
        if weights or path.suffix != ".safetensors":
            shutil.copy(path, directory / path.name)
    return directory


def test_a_model_directory_with_only_pytorch_model_bin_is_refused_unread(tmp_path):
    model = _tiny_files(tmp_path / "model", weights=False)
    marker = tmp_path / "unpickled"
    (model / "pytorch_model.bin").write_bytes(pickle.dumps(RunsCodeWhenUnpickled(marker)))
    with pytest.raises(PolicyLoadError, match=r"no \.safetensors weights: it holds pytorch_model\.bin") as info:
        Policy.from_pretrained(str(model))
    assert "unpickling can run code" in str(info.value) and not marker.exists()
    with pytest.raises(PolicyLoadError):
        Trainer(tiny_config(model=str(model)), out_dir=tmp_path / "run")
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_a_pickled_optimizer_file_is_refused_by_weights_only_load(run_copy, tmp_path):
    marker = tmp_path / "unpickled"
    step = run_copy / "checkpoints" / "step-2"
    torch.save({"optimizer": RunsCodeWhenUnpickled(marker), "torch_rng": torch.get_rng_state()}, step / "optimizer.pt")
    state = json.loads((step / "state.json").read_text())  # a consistent checkpoint: the digest matches
    state["sha256"]["optimizer.pt"] = hashlib.sha256((step / "optimizer.pt").read_bytes()).hexdigest()
    (step / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="optimizer.pt is unreadable"):
        Trainer.resume(run_copy)
    assert not marker.exists()
    torch.load(step / "optimizer.pt", weights_only=False)  # the file really is an attack ...
    assert marker.exists()  # ... which weights_only=True refused


def test_remote_code_is_not_run_unless_asked_for(tmp_path, monkeypatch):
    import transformers.dynamic_module_utils as remote

    monkeypatch.setattr(remote, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # not ~/.cache
    model = _tiny_files(tmp_path / "model", weights=True)
    marker = tmp_path / "remote-code-ran"
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="evil_qwen", auto_map={"AutoConfig": "evil.EvilConfig",
                                                     "AutoModelForCausalLM": "evil.EvilModel"})
    (model / "config.json").write_text(json.dumps(config))
    (model / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import Qwen2Config, Qwen2ForCausalLM\n"
        "class EvilConfig(Qwen2Config):\n    model_type = 'evil_qwen'\n"
        "class EvilModel(Qwen2ForCausalLM):\n    config_class = EvilConfig\n")
    with pytest.raises(PolicyLoadError, match="trust_remote_code=True"):
        Policy.from_pretrained(str(model))
    with pytest.raises(PolicyLoadError):
        Trainer(tiny_config(model=str(model)))
    assert not marker.exists()
    from transformers import AutoConfig

    AutoConfig.from_pretrained(str(model), trust_remote_code=True)  # the directory really carries code ...
    assert marker.exists()  # ... which runs only when asked for


# =============================================================================================
# make lab: 127.0.0.1 and token authentication
# =============================================================================================
def _lab_command() -> str:
    dry_run = subprocess.run(["make", "-n", "lab"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    lines = [line for line in dry_run.splitlines() if "jupyter lab" in line]
    assert len(lines) == 1, dry_run
    return lines[0]


def test_make_lab_binds_localhost_and_keeps_token_authentication(tmp_path):
    command = _lab_command()
    assert "--ServerApp.ip=127.0.0.1" in command
    disabling = [r"0\.0\.0\.0", r"--ip=(?!127\.0\.0\.1)", r"token\s*=\s*(''|\"\"|\s|$)", r"NotebookApp\.token",
                 r"IdentityProvider\.token", r"ServerApp\.token", r"password\s*=", r"disable_check_xsrf",
                 r"allow_remote_access", r"allow_origin", r"JUPYTER_TOKEN"]
    for pattern in disabling:
        assert not re.search(pattern, command), pattern
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert not re.search(r"(^|/)(jupyter_\w*config\.(py|json)|\.jupyter/)", tracked, re.M)  # no repo-local override
    # Jupyter's own view of that command line (user config left out): the address and no fixed token
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path)}
    argv = command.split()
    shown = subprocess.run([*argv, "--show-config"], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=120).stdout
    assert ".ip = '127.0.0.1'" in shown
    assert not re.search(r"\.(token|password|disable_check_xsrf|allow_remote_access)\s*=", shown), shown
