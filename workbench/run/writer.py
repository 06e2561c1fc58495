"""RunWriter: the one writer of a run directory, owned by whatever trains the run.

The workbench ``Trainer`` and the TRL backend each HAVE one (neither inherits it). It holds the
run's lock from ``claim`` (a new run) or ``reopen`` (a resumed one) to ``close``, writes the run's
config and the engine that trains it (``backend.json``; none: the workbench's own Trainer), its
steps (the rollouts first, then the metrics row: a step is on record once its row is), and saves
checkpoints: when due, and on the way out, best effort. A run resumes only on the engine that
trained it. The files and the lock themselves are ``store.RunStore``'s. After its files, each step
goes to the trackers ``report_to`` names (``trackers.Trackers``: TensorBoard, W&B), whichever engine trains.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from workbench.options import ConfigError
from workbench.run.store import RunStore
from workbench.run.trackers import Trackers

WORKBENCH = "workbench"  # the in-process Trainer's engine name: its runs have no backend.json
TRAINING_ENGINES = (WORKBENCH, "trl")  # the engines whose runs hold checkpoints to resume from


def engine_of(store: RunStore) -> str:
    """The engine that trains the run in ``store`` (backend.json's "backend"; none: the workbench's)."""
    backend = store.backend()
    return backend.get("backend", WORKBENCH) if backend else WORKBENCH


def require_engine(store: RunStore, engine: str) -> None:
    """A ConfigError naming the engine that trained the run in ``store`` unless it is ``engine``."""
    trained_on = engine_of(store)
    if trained_on == engine:
        return
    if trained_on not in TRAINING_ENGINES:  # an imported run, a TRL script's recording
        raise ConfigError(
            "backend",
            engine,
            f"an engine that trained the run in {store.dir}; it was recorded from elsewhere ({trained_on}) "
            "and holds no checkpoints to continue from: train a new run",
        )
    raise ConfigError(
        "backend",
        engine,
        f"the engine that trained the run in {store.dir} ({trained_on}): a run resumes on its own "
        f"engine, whose checkpoints it holds (workbench train --resume --backend {trained_on})",
    )


class RunWriter:
    def __init__(self, store: RunStore):
        self.store = store
        self.trackers: Trackers | None = None  # opened from the config: at start, or (a resume) at the first step

    @classmethod
    def claim(cls, out_dir: str | Path) -> RunWriter:
        """The writer of a directory that holds no run yet (else a ConfigError naming the run there)."""
        store = RunStore(out_dir)
        if not store.holds_run():  # checked again under the lock: another process may have started one
            store.lock()
        if store.holds_run():
            store.unlock()
            steps = store.checkpoint_steps()
            saved = f" (its last checkpoint is at step {steps[-1]})" if steps else ""
            raise ConfigError(
                "out_dir",
                str(store.dir),
                f"a directory that holds no run yet; this one holds a run{saved}"
                f": continue it with Trainer.resume({str(store.dir)!r}) (workbench train --resume)",
            )
        return cls(store)

    @classmethod
    def reopen(cls, run_dir: str | Path, engine: str = WORKBENCH) -> RunWriter:
        """The writer of an existing run, to continue it on ``engine`` (RunLockedError while another
        writer holds it; a ConfigError naming the engine that trained it when that is another)."""
        store = RunStore(run_dir)
        store.lock()
        try:
            require_engine(store, engine)
        except ConfigError:
            store.unlock()
            raise
        return cls(store)

    @property
    def dir(self) -> Path:
        return self.store.dir

    def start(self, cfg, history: list[dict] | tuple = (), backend: dict | None = None) -> None:
        """Write a new run: its config.yaml, the engine that trains it when it is not the workbench's
        own (``backend``: backend.json), and the metrics rows it inherits (a fork's)."""
        self.store.create(cfg)
        self._report_to(cfg)
        if backend is not None:
            self.store.write_backend(backend)
        for row in history:
            self.store.append_metrics(row)

    def write_config(self, cfg) -> None:
        self.store.write_config(cfg)
        self._report_to(cfg)

    def _report_to(self, cfg) -> Trackers:
        """Report the steps recorded from now on to ``cfg.report_to`` (a live change closes the others)."""
        if self.trackers is not None and self.trackers.wanted == list(cfg.report_to):
            return self.trackers
        if self.trackers is not None:
            self.trackers.close()
        self.trackers = Trackers(self.dir, cfg.report_to, cfg.to_dict())
        return self.trackers

    def record(self, step: int, rollouts: pd.DataFrame | None, row: dict) -> None:
        """Commit a finished step: its rollouts (when kept), then its metrics row, last. A failure
        before the row leaves no trace of the step (its rollouts file is rewritten when it runs again).
        Then the trackers, which never fail the step (a failing one is a warning)."""
        if rollouts is not None:
            self.store.write_rollouts(step, rollouts)
        self.store.append_metrics(row)
        trackers = self.trackers or self._report_to(self.store.config())  # resumed: config.yaml says where
        trackers.record(step, rollouts, row)

    def checkpoint(
        self, step: int, policy, optimizer, state: dict, engine_files: dict[str, Path] | None = None
    ) -> Path:
        """The checkpoint of ``step``: adapter, optimizer and RNG state, ``state``, and the engine's own
        files when it has some (``engine_files``: TRL's checkpoint); digests of all, checked on load."""
        return self.store.save_checkpoint(step, policy, optimizer, state, engine_files)

    def checkpoint_if_due(self, step: int, every: int, policy, optimizer, state: dict) -> None:
        if every and step % every == 0:
            self.checkpoint(step, policy, optimizer, state)

    def save_on_the_way_out(self, step: int, policy, optimizer, state: dict) -> None:
        """Best effort: a checkpoint of the last finished step, so that a resume continues from it.
        A failure (a full disk, say) is a warning naming the checkpoint the run would resume from."""
        if step in self.store.checkpoint_steps():
            return
        try:
            self.checkpoint(step, policy, optimizer, state)
        except Exception as error:
            warn_unsaved(self.store, step, error)

    def close(self) -> None:
        """Close the trackers and let go of the run directory's lock: this writer writes no more."""
        if self.trackers is not None:
            self.trackers.close()
            self.trackers = None
        self.store.unlock()


def resume_changes(cfg, changes: dict, run_dir: Path, live_fields: tuple[str, ...]) -> dict:
    """The requested config ``changes`` that differ from the run's ``cfg``: those among
    ``live_fields`` are returned (to be applied), any other is refused naming config.yaml's value."""
    differ = {k: v for k, v in changes.items() if getattr(cfg, k) != v}
    fixed = sorted(set(differ) - set(live_fields))
    if fixed:
        can = f"only {', '.join(live_fields)} can change on resume" if live_fields else "nothing changes on resume here"
        raise ConfigError(
            fixed[0],
            differ[fixed[0]],
            f"the value in {Path(run_dir) / 'config.yaml'} "
            f"({getattr(cfg, fixed[0])!r}): a resumed run keeps what shapes it; {can}. "
            "Fork the run to change the rest",
        )
    if differ:
        cfg.replace(**differ)  # validates them (method_options merged) before anything is written
    return differ


def warn_unsaved(store: RunStore, step: int, error: Exception) -> None:
    """The warning of a best-effort checkpoint that failed: it names the checkpoint a resume would use."""
    earlier = store.checkpoint_steps()
    warnings.warn(
        f"could not save a checkpoint at step {step} ({error}); "
        f"the run resumes from step {earlier[-1] if earlier else 0}",
        RuntimeWarning,
        stacklevel=3,
    )
