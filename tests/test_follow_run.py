"""Following a run directory that another process writes (issue 20, point 4): the engine's
RunFollower (half-written lines, a directory not there yet, a resume that cuts the history, a lock
held elsewhere) and the widgets that follow a real training process step by step, never locking
or writing into its directory."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench import RunConfig
from workbench.run.follower import RunFollower
from workbench.run.lock import lock_held
from workbench.run.store import RunStore
from workbench.step.batch import RolloutBatch

SMALL = dict(num_prompts=2, num_generations=2, max_completion_length=8, seed=5, threads=1)
# a training process that steps when told: one "step" line on stdin, one step; anything else ends it
WRITER = f"""
import sys
from workbench import RunConfig, Trainer
trainer = Trainer(RunConfig(**{SMALL}), out_dir=sys.argv[1])
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() != "step":
        break
    trainer.step()
    print("stepped", trainer.step_index - 1, flush=True)
trainer.close()
"""
# a process that holds a run's writer lock until its stdin closes
HOLDER = "import sys; from workbench.run.store import RunStore; s = RunStore(sys.argv[1]); s.lock(); print('held', " \
         "flush=True); sys.stdin.read()"


def row(step: int, **values) -> dict:
    return {"step": step, "reward_mean": 0.1 * step, "entropy_mean": 1.0 - 0.1 * step, **values}


def started_run(path: Path, steps: int = 0, locking: bool = True) -> RunStore:
    """A run directory with its config and ``steps`` metrics rows, written as a trainer writes them
    (``locking``: under the run's lock, let go of at the end)."""
    store = RunStore(path)
    if locking:
        store.lock()
    store.create(RunConfig(**SMALL))
    for step in range(steps):
        store.append_metrics(row(step))
    store.unlock()
    return store


def files_state(run: Path) -> str:
    """Every file's path, bytes and modification time: what a reader must leave as it found it."""
    digest = hashlib.sha256()
    for path in sorted(p for p in run.rglob("*") if p.is_file()):
        digest.update(path.relative_to(run).as_posix().encode() + path.read_bytes())
        digest.update(str(path.stat().st_mtime_ns).encode())
    return digest.hexdigest()


def text(html_text: str) -> str:
    return re.sub(r"<[^>]+>", "", html_text)


# --- RunFollower -----------------------------------------------------------------------------------
def test_a_directory_that_does_not_exist_yet_is_waited_for_and_not_created(tmp_path):
    run = tmp_path / "run"
    follower = RunFollower(run)
    update = follower.poll()
    assert not update.news and follower.state == "waiting"
    assert follower.describe() == "waiting for the run to start (no config.yaml yet)"
    assert not run.exists()
    store = started_run(run, locking=False)
    update = follower.poll()
    assert update.config is not None and update.config.num_generations == 2
    # no .lock: every engine locks its run first, so nobody writes this one (a copy, a recording)
    assert follower.state == "finished" and follower.describe() == "finished · no step recorded · recorded (no writer)"
    store.lock()
    follower.poll()
    assert follower.state == "running" and follower.describe() == "waiting for step 0"
    store.append_metrics(row(0))
    assert [r["step"] for r in follower.poll().rows] == [0]
    assert follower.describe() == "step 0 · waiting for step 1"
    store.unlock()
    follower.poll()
    assert follower.state == "finished" and follower.describe() == "finished · step 0 · its writer let go of the run"


def test_a_half_written_last_line_is_read_once_it_is_whole(tmp_path):
    store = started_run(tmp_path / "run", steps=2)
    line = (json.dumps(row(2)) + "\n").encode()
    with open(store.metrics_path, "ab") as f:
        f.write(line[:9])  # a writer part-way through a line
    follower = RunFollower(store.dir)
    assert [r["step"] for r in follower.poll().rows] == [0, 1]
    assert follower.damaged_lines == []
    with open(store.metrics_path, "ab") as f:
        f.write(line[9:])
    assert follower.poll().rows == [row(2)]
    assert not follower.poll().news  # nothing is read twice


def test_a_damaged_line_is_skipped_and_named_like_read_metrics_does(tmp_path):
    store = started_run(tmp_path / "run", steps=1)
    with open(store.metrics_path, "ab") as f:
        f.write(b"garbage from an editor\n")
    store.append_metrics(row(1))
    follower = RunFollower(store.dir)
    assert [r["step"] for r in follower.poll().rows] == [0, 1]
    assert follower.damaged_lines == [(2, "garbage from an editor")]


@pytest.mark.parametrize("how", ["replaced", "cut-in-place", "step-written-again"])
def test_a_history_that_goes_back_is_read_again_from_its_start(tmp_path, how):
    store = started_run(tmp_path / "run", steps=5)
    follower = RunFollower(store.dir, steps=8)
    assert len(follower.poll().rows) == 5
    if how == "replaced":  # what a resume from the checkpoint of step 3 does
        store.truncate_metrics(2)
    elif how == "cut-in-place":
        lines = store.metrics_path.read_bytes().splitlines(keepends=True)
        with open(store.metrics_path, "r+b") as f:
            f.truncate(sum(len(line) for line in lines[:3]))
    else:  # appended again without a cut: the later row of a step counts, as for read_metrics
        store.append_metrics(row(2, reward_mean=9.0))
    update = follower.poll()
    assert update.restarted
    assert update.rows == store.read_metrics()
    assert follower.last_step == update.rows[-1]["step"]
    store.append_metrics(row(follower.last_step + 1))
    update = follower.poll()
    assert not update.restarted and [r["step"] for r in update.rows] == [follower.last_step]


def test_rollouts_are_reported_once_their_step_is_recorded_and_again_when_rewritten(tmp_path):
    store = started_run(tmp_path / "run", steps=1)
    frame = pd.DataFrame({"step": [1], "completion": ["1+1"]})
    store.write_rollouts(0, frame)
    store.write_rollouts(1, frame)  # written before its metrics row, as a trainer does
    follower = RunFollower(store.dir)
    assert follower.poll().rollout_steps == [0]
    store.append_metrics(row(1))
    assert follower.poll().rollout_steps == [1]
    assert not follower.poll().news
    time.sleep(0.01)  # a new modification time on coarse clocks
    store.write_rollouts(1, pd.DataFrame({"step": [1], "completion": ["2+2"]}))
    assert follower.poll().rollout_steps == [1]
    assert follower.rollouts(1)["completion"].tolist() == ["2+2"]
    assert not list(store.rollouts_dir.glob("*.tmp"))  # written whole, by a rename


def test_a_lock_held_by_another_process_keeps_the_run_running_until_it_lets_go(tmp_path):
    store = started_run(tmp_path / "run", steps=2)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store.dir)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = files_state(store.dir)
        follower = RunFollower(store.dir)
        assert len(follower.poll().rows) == 2 and lock_held(store.dir) is True
        assert follower.state == "running" and follower.describe() == "step 1 · waiting for step 2"
        assert files_state(store.dir) == before
    finally:
        holder.communicate("", timeout=60)
    follower.poll()
    assert follower.state == "finished"
    assert follower.describe() == "finished · step 1 · its writer let go of the run"


def test_a_holder_on_another_host_cannot_be_seen_from_here(tmp_path):
    store = started_run(tmp_path / "run", steps=1)
    (store.dir / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "since": 0.0}))
    assert lock_held(store.dir) is None
    follower = RunFollower(store.dir)
    follower.poll()
    assert follower.state == "running"  # a run on a shared disk is over when its last step arrives
    known = RunFollower(store.dir, steps=1)
    known.poll()
    assert known.state == "finished" and known.describe() == "finished · step 0 (1 of 1 steps)"
    with pytest.raises(ValueError, match="steps=0"):
        RunFollower(store.dir, steps=0)


# --- widgets following a training process -----------------------------------------------------------
def spans_values(html_text: str) -> list[float]:
    return [float(v) for v in re.findall(r"data-value='([^']+)'", html_text)]


def test_widgets_follow_a_run_that_another_process_trains(tmp_path):
    pytest.importorskip("ipywidgets")
    from widgets import DiversityPanel, RunComparison, TokenView, TrainingDashboard

    run = tmp_path / "run"
    # polled by hand below (a long interval keeps the timers out of the way), but for one
    # dashboard that is left to its timer
    dashboard = TrainingDashboard(run, steps=3, min_interval=0, interval=60)
    tokens = TokenView(run, interval=60)
    diversity = DiversityPanel(run, redraw_interval=0, interval=60)
    comparison = RunComparison([run], interval=60)
    timed = TrainingDashboard(run, steps=3, min_interval=0, interval=0.2)
    followers = (dashboard, tokens, diversity, comparison)
    assert "waiting for the run to start" in text(dashboard.status.value)
    assert "no rollouts recorded yet" in tokens.strips.value and not run.exists()

    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(run)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        for widget in followers:
            widget.poll()
        assert "waiting for step 0 (of 3 steps)" in text(dashboard.status.value)
        for step in range(3):
            writer.stdin.write("step\n")
            writer.stdin.flush()
            assert writer.stdout.readline().split() == ["stepped", str(step)]
            before = files_state(run)
            for widget in followers:
                widget.poll()
            check_step(run, step, dashboard, tokens, diversity, comparison)
            assert files_state(run) == before  # read, never written (the writer waits on stdin meanwhile)
        assert "waiting for step 3" in text(comparison.status.value)  # not told how many steps: the lock decides
    finally:
        writer.communicate("end\n", timeout=120)
    assert writer.returncode == 0
    before = files_state(run)
    for widget in followers:
        widget.poll()
    assert files_state(run) == before
    assert "finished · step 2" in text(comparison.status.value) and "finished" in text(tokens.feed.status.value)
    deadline = time.monotonic() + 30
    while "finished" not in timed.status.value and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "finished · step 2 (3 of 3 steps)" in text(timed.status.value)  # its own timer followed the run
    assert list(timed.trace("reward_mean").x) == [0, 1, 2]
    for widget in (*followers, timed):
        widget.close()
    with pytest.raises(RuntimeError, match="another process trains"):
        dashboard.start()


def check_step(run: Path, step: int, dashboard, tokens, diversity, comparison) -> None:
    """What each widget shows once ``step`` has been recorded."""
    import ipywidgets as W

    recorded = RunStore(run).read_metrics()
    assert [r["step"] for r in recorded] == list(range(step + 1))
    np.testing.assert_allclose(dashboard.trace("reward_mean").y, [r["reward_mean"] for r in recorded])
    np.testing.assert_array_equal(dashboard.trace("entropy_mean").x, list(range(step + 1)))
    status = text(dashboard.status.value)
    assert f"following {run}" in status
    assert (f"step {step} ({step + 1} of 3 steps) · waiting for step {step + 1}" in status if step < 2 else
            "finished · step 2 (3 of 3 steps)" in status and dashboard.state == "finished")
    # no buttons: another process trains the run
    assert not any(isinstance(c, W.Button) for c in dashboard.children[0].children) and dashboard.runner is None

    assert list(tokens.step_control.options) == list(range(step + 1)) and tokens.shown_step == step
    frame = pd.read_parquet(run / "rollouts" / f"step-{step}.parquet")
    shown = frame[frame["group"] == tokens.prompt_control.value]
    np.testing.assert_allclose(spans_values(tokens.strips.value), np.concatenate(shown["entropy"].tolist()),
                               rtol=1e-5)
    assert tokens.batch.text == RolloutBatch.from_frame(frame).text == frame["completion"].tolist()

    assert [r["step"] for r in diversity.distinct_records] == list(range(step + 1))
    assert f"(step {step})" in diversity.prompt_text.value
    assert list(diversity.distinct_figure.data[0].x) == list(range(step + 1))

    label = comparison.labels[0]
    assert label == run.name  # named before the run had a config to say its method
    assert comparison.series(label)[0] == list(range(step + 1))
    if step < 2:
        assert f"step {step} · waiting for step {step + 1}" in text(comparison.status.value)


def test_a_finished_run_is_shown_whole_and_a_resume_starts_its_history_again(tmp_path):
    pytest.importorskip("ipywidgets")
    from widgets import TrainingDashboard

    store = started_run(tmp_path / "run", steps=4)
    before = files_state(store.dir)
    dashboard = TrainingDashboard(store.dir, min_interval=0, interval=60)
    assert files_state(store.dir) == before
    assert list(dashboard.trace("reward_mean").x) == [0, 1, 2, 3]
    assert "finished · step 3 · its writer let go of the run" in text(dashboard.status.value)
    store.truncate_metrics(1)  # a resume from the checkpoint of step 2
    store.append_metrics(row(2, reward_mean=0.9))
    dashboard.poll()
    assert list(dashboard.trace("reward_mean").x) == [0, 1, 2]
    assert dashboard.trace("reward_mean").y[-1] == pytest.approx(0.9)
    dashboard.close()
