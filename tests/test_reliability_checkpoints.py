"""Reliability (issue 8): damaged checkpoints are named and the run left as it was; a SIGKILL
while writing leaves the previous checkpoint and resume is exact. Rows of docs/reliability.md."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from reliability_common import REPO, tiny_config, tree_digest

from workbench import Trainer
from workbench.run.store import CheckpointError, RunStore


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


