"""RunSource: one feed of a run for whatever draws it, whether a trainer in this process trains the
run (``LiveRun``) or another process writes it into a run directory (``run_follower.RunFollower``).

Both answer the same calls, so a widget never asks which it has:

    poll() -> RunUpdate       the metrics rows, rollouts, config and evaluations new since the last poll
    describe() -> str         where the run is, in words
    step_batch(step)          a step's rollouts as a ``RolloutBatch`` and what decodes its tokens
    rollout_steps()           the steps whose rollouts can be read now
    watch(on_change, s)       call ``on_change()`` when there may be news; returns the function that stops it
    controllable              whether this process trains the run (a ``LiveRun`` has ``trainer`` to drive)

``open_run`` turns a Trainer or a run directory into its source. A source remembers what its polls
have returned, so each reader opens its own.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from workbench.config import RunConfig
from workbench.run.follower import RunFollower, RunUpdate, StepBatch

KEPT_BATCHES = 8  # the last steps' batches a LiveRun holds for its readers (a real model's is megabytes)


class RunSource(Protocol):
    controllable: bool
    config: RunConfig | None
    state: str

    @property
    def origin(self) -> str: ...

    @property
    def location(self) -> Path | None: ...

    def poll(self) -> RunUpdate: ...

    def describe(self) -> str: ...

    def step_batch(self, step: int) -> StepBatch: ...

    def rollout_steps(self) -> list[int]: ...

    def watch(self, on_change: Callable[[], None], interval: float) -> Callable[[], None]: ...

    def close(self) -> None: ...


class LiveRun:
    """The feed of ``trainer``, a ``workbench.Trainer`` in this process, read from its public
    surface: ``records``, ``subscribe``, ``last_batch``, ``cfg``, ``step_index``.

    It subscribes at once and keeps the batches of the last ``KEPT_BATCHES`` steps the trainer
    announced (its ``metrics`` phase), and its last one from before; ``watch`` calls back after
    every phase. ``phase_count`` counts the phases announced since it opened and ``last_phase``
    is the last of them. ``state`` is "live": the state of the training is its driver's.
    ``close()`` unsubscribes."""

    controllable = True
    state = "live"

    def __init__(self, trainer):
        self.trainer = trainer
        self.config: RunConfig | None = None  # as of the last poll
        self.phase_count = 0
        self.last_phase = None
        self._seen = 0  # records returned by the polls so far
        self._lock = threading.Lock()  # the trainer's thread (phases) vs the readers' (polls)
        self._batches: dict = {}  # step -> RolloutBatch
        self._new_steps: list[int] = []  # steps announced since the last poll
        self._listeners: list[Callable[[], None]] = []
        if trainer.last_batch is not None:
            self._keep(trainer.step_index - 1, trainer.last_batch)
        self._unsubscribe = trainer.subscribe(self._on_phase)

    @property
    def origin(self) -> str:
        return f"{self.trainer.cfg.method} trainer"

    @property
    def location(self) -> Path | None:
        """The trainer's run directory, None when it writes none."""
        store = getattr(self.trainer, "store", None)
        return None if store is None else store.dir

    def _keep(self, step: int, batch) -> None:
        with self._lock:
            self._batches[step] = batch
            for old in sorted(self._batches)[:-KEPT_BATCHES]:
                del self._batches[old]
            self._new_steps.append(step)

    def _on_phase(self, phase) -> None:
        self.phase_count += 1
        self.last_phase = phase
        if phase.name == "metrics":
            self._keep(phase.step, phase.batch)
        for on_change in list(self._listeners):
            on_change()

    def poll(self) -> RunUpdate:
        """The records, batches and config new since the last poll; ``restarted`` when the trainer's
        history went back (a resume): its records are then returned from the start."""
        records = self.trainer.records
        restarted = len(records) < self._seen
        if restarted:
            self._seen = 0
        update = RunUpdate(rows=records[self._seen :], restarted=restarted)
        self._seen = len(records)
        if self.trainer.cfg is not self.config:  # set_live replaces the config
            self.config = update.config = self.trainer.cfg
        with self._lock:
            update.rollout_steps, self._new_steps = self._new_steps, []
        return update

    def describe(self) -> str:
        n = self.trainer.step_index
        return "no step recorded yet · next: step 0" if n == 0 else f"step {n - 1} recorded · next: step {n}"

    def step_batch(self, step: int) -> StepBatch:
        with self._lock:
            batch = self._batches.get(step)
            held = sorted(self._batches)
        if batch is None:
            raise LookupError(
                f"step={step!r} is not held: a live trainer's last {KEPT_BATCHES} steps are "
                f"({', '.join(map(str, held)) or 'none yet'}); its run directory keeps every step"
            )
        return StepBatch(step, batch, self.trainer.policy.tokenizer)

    def rollout_steps(self) -> list[int]:
        with self._lock:
            return sorted(self._batches)

    def watch(self, on_change: Callable[[], None], interval: float) -> Callable[[], None]:
        """Call ``on_change()`` after every phase the trainer announces (``interval`` is a directory's
        and not needed: a trainer says when it changes)."""
        self._listeners.append(on_change)
        return lambda: self._listeners.remove(on_change) if on_change in self._listeners else None

    def close(self) -> None:
        self._listeners.clear()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None


def open_run(source, steps: int | None = None) -> RunSource:
    """The feed of ``source``: a ``LiveRun`` of a Trainer, or a ``RunFollower`` of a run directory (a
    str or Path; ``steps``: how many steps its run trains, when known)."""
    if isinstance(source, (str, os.PathLike)):
        return RunFollower(Path(source), steps)
    if hasattr(source, "records") and hasattr(source, "subscribe"):
        return LiveRun(source)
    raise TypeError(
        f"source={type(source).__name__} is not allowed: a workbench Trainer or a run directory (str or Path)"
    )
