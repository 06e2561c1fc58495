"""RunFollower: what is new in a run directory that another process is writing.

A reader, like eval and report: it never takes the run's lock and never writes into the directory,
so it can follow a ``workbench train`` in a terminal, a run under accelerate, or a run on another
machine writing to a shared disk. Each ``poll`` returns only what the polls before it had not
seen. It relies on how a run is written (``store.RunStore``): metrics.jsonl is appended one whole
line per step and written last of a step's files; rollouts and config.yaml are renamed into place
whole; a resume replaces metrics.jsonl with its first rows.

Where a run is in words (``describe``): "waiting for the run to start" before config.yaml exists,
"step 12 of 50 · waiting for step 13" while it runs, "finished" once the last step arrives or
the writer lets go of the run's lock with no rows left to read; "gone" once its config.yaml went
away (the directory deleted or moved), the rows read so far kept.

It is one of the two ``run_source.RunSource`` feeds widgets read (the other is ``LiveRun``, a
trainer in this process): ``poll``, ``describe``, ``step_batch``, ``watch``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from workbench.config import RunConfig
from workbench.run.lock import LOCK_NAME, lock_held
from workbench.run.store import RunStore, parse_metrics
from workbench.step.batch import RecordedTokens, RolloutBatch


@dataclass
class RunUpdate:
    """What one ``RunFollower.poll`` found that the polls before it had not."""

    rows: list[dict] = field(default_factory=list)  # metrics rows of new steps, in step order
    rollout_steps: list[int] = field(default_factory=list)  # steps whose rollouts file is new or rewritten
    config: RunConfig | None = None  # the run's config, when it appeared or changed
    evaluations: dict | None = None  # eval.json ({name: {split: result}}), when it appeared or changed
    # the steps went back (a resume from an earlier checkpoint): ``rows`` is the history from its start
    restarted: bool = False

    @property
    def news(self) -> bool:
        return bool(
            self.rows or self.rollout_steps or self.config is not None or self.evaluations is not None or self.restarted
        )


@dataclass
class StepBatch:
    """The rollouts of one step as a ``RolloutBatch``, with what decodes its token ids: the trainer's
    tokenizer, the token texts the run recorded (``batch.RecordedTokens``), or None (ids only)."""

    step: int
    batch: RolloutBatch
    tokenizer: object | None


class RunFollower:
    """Follows the run directory ``run_dir`` (which may not exist yet); ``steps`` is how many steps
    the run is to train, when known (a run directory does not record it), so that the last one
    can be recognised.

    ``state`` is "waiting" (no config.yaml yet), "running", "finished" or "gone" (deleted or
    moved); ``last_step`` the last step whose metrics were read (None before the first);
    ``config`` the run's config. Another process trains the run: ``controllable`` is False."""

    controllable = False

    def __init__(self, run_dir: str | Path, steps: int | None = None):
        if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
            raise ValueError(f"steps={steps!r} is not allowed: an integer >= 1, or None when not known")
        self.store = RunStore(run_dir)
        self.dir = self.store.dir
        self.steps = steps
        self.config: RunConfig | None = None
        self.state = "waiting"
        self.unwritten = False  # no lock file: nobody writes the run (a copy, a recording)
        self._signatures: dict[str, tuple] = {}  # config.yaml, eval.json: (inode, size, mtime) as last read
        self._forget_rows()

    def _forget_rows(self) -> None:
        """Start the metrics (and the rollouts they vouch for) from the beginning of the file."""
        self.last_step: int | None = None
        self.damaged_lines: list[tuple[int, str]] = []  # (line number, text) skipped, as RunStore.read_metrics
        self._identity: tuple[int, int] | None = None  # (device, inode) of the metrics file being read
        self._offset = 0  # bytes of it read: whole lines only
        self._tail = b""  # the last line read, which ends at _offset: still there, the file is the same history
        self._lines = 0
        self._steps: set[int] = set()
        self._rollouts: dict[int, tuple] = {}  # step -> (inode, size, mtime) of its file as last reported

    def poll(self) -> RunUpdate:
        """Read what the run wrote since the last poll."""
        # asked before reading: every row a writer wrote before it let go is then on disk to be read
        writer_held = lock_held(self.dir)
        # every engine locks its run, so a run with no lock file at all has no writer: a copy, a recording
        self.unwritten = writer_held is None and not (self.dir / LOCK_NAME).exists()
        update = RunUpdate(config=self._read_if_changed("config.yaml", self.store.config))
        if update.config is not None:
            self.config = update.config
        if self.config is None:
            self.state = "waiting"
            return update
        if not (self.dir / "config.yaml").exists():  # deleted or moved: the rows read so far stay shown
            self.state = "gone"
            return update
        update.rows, update.restarted = self._new_rows()
        update.rollout_steps = self._new_rollouts()
        update.evaluations = self._read_if_changed("eval.json", self.store.read_evaluations)
        last = self.steps is not None and self.last_step is not None and self.last_step >= self.steps - 1
        self.state = "finished" if last or writer_held is False or self.unwritten else "running"
        return update

    def rollouts(self, step: int):
        """The rollouts frame of ``step`` (a pandas DataFrame, as ``RolloutBatch.to_frame`` wrote it)."""
        return self.store.read_rollouts(step)

    def step_batch(self, step: int) -> StepBatch:
        """The rollouts of ``step`` as a batch, its tokens read as the run recorded them."""
        frame = self.rollouts(step)
        tokens = RecordedTokens(frame) if "tokens" in frame else None
        return StepBatch(step, RolloutBatch.from_frame(frame), tokens)

    def rollout_steps(self) -> list[int]:
        """The steps whose rollouts the polls so far have reported, in order."""
        return sorted(self._rollouts)

    @property
    def origin(self) -> str:
        return f"following {self.dir}"

    @property
    def location(self) -> Path:
        """The run directory."""
        return self.dir

    def watch(self, on_change: Callable[[], None], interval: float) -> Callable[[], None]:
        """Call ``on_change()`` every ``interval`` seconds, on a daemon thread, until the returned
        function is called: a directory does not say when it changes, so it is looked at."""
        if not interval > 0:
            raise ValueError(f"interval={interval!r} is not allowed: seconds > 0 between polls")
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval):
                on_change()

        threading.Thread(target=loop, daemon=True, name=f"RunFollower {self.dir.name}").start()
        return stop.set

    def close(self) -> None:
        """Nothing to let go of: a follower holds no file open between polls."""

    def describe(self) -> str:
        """Where the run is, in words, as of the last poll."""
        if self.state == "waiting":
            return "waiting for the run to start (no config.yaml yet)"
        if self.state == "gone":
            at = "" if self.last_step is None else f" after step {self.last_step}"
            return f"the run directory {self.dir} is gone (deleted or moved){at}"
        # steps count from 0: "step 39 (40 of 40 steps)" is the last of a 40-step run
        if self.last_step is None:
            at = "no step recorded"
        elif self.steps is None:
            at = f"step {self.last_step}"
        else:
            at = f"step {self.last_step} ({self.last_step + 1} of {self.steps} steps)"
        if self.state == "running":
            if self.last_step is None:
                return "waiting for step 0" + (f" (of {self.steps} steps)" if self.steps is not None else "")
            return f"{at} · waiting for step {self.last_step + 1}"
        reached = self.steps is not None and self.last_step is not None and self.last_step >= self.steps - 1
        why = "" if reached else " · recorded (no writer)" if self.unwritten else " · its writer let go of the run"
        return f"finished · {at}{why}"

    def _read_if_changed(self, name: str, read: Callable[[], object]):
        """``read()`` when the file ``name`` is new or changed since it was last read, else None."""
        try:
            stat = (self.dir / name).stat()
        except FileNotFoundError:
            return None
        signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if self._signatures.get(name) == signature:
            return None
        value = read()
        self._signatures[name] = signature
        return value

    def _new_rows(self) -> tuple[list[dict], bool]:
        """The rows of the steps appended since the last poll, and whether the history started over
        (metrics.jsonl replaced, cut shorter, rewritten in place, or a step written again): then
        every row is read again."""
        try:
            with open(self.store.metrics_path, "rb") as f:
                stat = os.fstat(f.fileno())
                restarted = self._identity not in (None, (stat.st_dev, stat.st_ino)) or stat.st_size < self._offset
                if not restarted and self._tail:  # the same file rewritten in place (a cp over it)?
                    f.seek(self._offset - len(self._tail))
                    restarted = f.read(len(self._tail)) != self._tail
                if restarted:
                    self._forget_rows()
                self._identity = (stat.st_dev, stat.st_ino)
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            restarted = self._identity is not None  # the file went away: its rows are no longer the history
            if restarted:
                self._forget_rows()
            return [], restarted
        whole = data[: data.rfind(b"\n") + 1]  # a last line without its newline is still being written
        by_step, damaged = parse_metrics(whole, first_line=self._lines + 1)
        if by_step and self.last_step is not None and min(by_step) <= self.last_step:
            self._forget_rows()  # a step written again: read it all as RunStore.read_metrics would
            return self._new_rows()[0], True
        self._offset += len(whole)
        self._lines += whole.count(b"\n")
        if whole:
            self._tail = whole[whole.rfind(b"\n", 0, len(whole) - 1) + 1 :]
        self.damaged_lines += damaged
        self._steps.update(by_step)
        if by_step:
            self.last_step = max(by_step)
        return [by_step[step] for step in sorted(by_step)], restarted

    def _new_rollouts(self) -> list[int]:
        """Steps whose rollouts file appeared or was rewritten, among those whose metrics row was read
        (a writer writes that row last: before it, the step may still be undone)."""
        new = []
        for step in self.store.rollout_steps():
            if step not in self._steps:
                continue
            try:
                stat = (self.store.rollouts_dir / f"step-{step}.parquet").stat()
            except FileNotFoundError:  # replaced between the listing and now: the next poll sees it
                continue
            signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if self._rollouts.get(step) != signature:
                self._rollouts[step] = signature
                new.append(step)
        return new
