"""RunWriter: the one writer of a run directory, owned by whatever trains the run.

The workbench ``Trainer`` and the TRL backend each HAVE one (neither inherits it). It holds the
run's lock from ``claim`` (a new run) or ``reopen`` (a resumed one) to ``close``, writes the run's
config and its steps (the rollouts first, then the metrics row: a step is on record once its row
is), and saves checkpoints: when due, and on the way out, best effort. The files and the lock
themselves are ``store.RunStore``'s.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from workbench.options import ConfigError
from workbench.run.store import RunStore


class RunWriter:
    def __init__(self, store: RunStore):
        self.store = store

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
    def reopen(cls, run_dir: str | Path) -> RunWriter:
        """The writer of an existing run, to continue it (RunLockedError while another writer holds it)."""
        store = RunStore(run_dir)
        store.lock()
        return cls(store)

    @property
    def dir(self) -> Path:
        return self.store.dir

    def start(self, cfg, history: list[dict] | tuple = ()) -> None:
        """Write a new run: its config.yaml, and the metrics rows it inherits (a fork's)."""
        self.store.create(cfg)
        for row in history:
            self.store.append_metrics(row)

    def write_config(self, cfg) -> None:
        self.store.write_config(cfg)

    def record(self, step: int, rollouts: pd.DataFrame | None, row: dict) -> None:
        """Commit a finished step: its rollouts (when kept), then its metrics row, last. A failure
        before the row leaves no trace of the step (its rollouts file is rewritten when it runs again)."""
        if rollouts is not None:
            self.store.write_rollouts(step, rollouts)
        self.store.append_metrics(row)

    def checkpoint(self, step: int, policy, optimizer, state: dict) -> Path:
        """The checkpoint of ``step``: adapter, optimizer and RNG state, ``state`` (digests checked on load)."""
        return self.store.save_checkpoint(step, policy, optimizer, state)

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
            earlier = self.store.checkpoint_steps()
            warnings.warn(
                f"could not save a checkpoint at step {step} ({error}); the run resumes "
                f"from step {earlier[-1] if earlier else 0}",
                RuntimeWarning,
                stacklevel=3,
            )

    def close(self) -> None:
        """Let go of the run directory's lock: this writer writes no more."""
        self.store.unlock()
