"""Trackers: a run's steps reported to TensorBoard and Weights & Biases too (``RunConfig.report_to``).

The run directory stays the source of truth: ``RunWriter.record`` writes the step's files first and
then hands the step to ``Trackers``, so every engine (the workbench Trainer, the TRL backend, Ray
trials) reports through the one writer it owns. Each tracker gets every numeric metric of the step's
row, a histogram of the step's token entropies (from its rollouts, when they are kept) and, where the
tracker has tables, a few responses every ``TABLE_EVERY`` steps. Names are TRL's (``report_to``).

```
RUN_DIR/tensorboard/             TensorBoard event files (a resumed run purges the steps it runs again)
RUN_DIR/wandb/offline-run-*/     one W&B run per session of the writer; offline unless WANDB_MODE says
                                 otherwise (a resumed run is a new W&B run, grouped under the run's name)
```

A tracker that fails (not installed, a full disk, a service that dies) is a warning, once, and stops
reporting; the run and its own files carry on.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from workbench.options import ConfigError

TABLE_EVERY = 10  # steps between two tables of responses (the first step a writer records has one)
TABLE_ROWS = 8  # responses a table shows
TABLE_COLUMNS = ("prompt", "completion", "reward", "length")
INSTALL_HINT = "pip install 'exploration-workbench[trackers]'"


def names(value: Any) -> list[str]:
    """``report_to`` as a list of tracker names, TRL's way: a list, one name, names separated by commas
    (``--set report_to=tensorboard,wandb``), "all" or "none". A ConfigError names the value otherwise."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(n, str) for n in items):
        raise ConfigError("report_to", value, ALLOWED)
    wanted = [n.strip() for n in items if n.strip()]
    if wanted in (["none"], ["all"]):
        return [] if wanted == ["none"] else list(TRACKERS)
    unknown = [n for n in wanted if n not in TRACKERS]
    if unknown:
        raise ConfigError("report_to", value, f"{ALLOWED}; {unknown[0]!r} is not a tracker the workbench has")
    return list(dict.fromkeys(wanted))


def scalars(row: dict) -> dict[str, float]:
    """The numeric metrics of a metrics row (its step aside), as floats."""
    return {
        k: float(v) for k, v in row.items() if k != "step" and isinstance(v, numbers.Real) and not isinstance(v, bool)
    }


def token_entropies(rollouts: pd.DataFrame | None) -> np.ndarray | None:
    """Every token entropy of the step's responses, one array (None: no rollouts, or no tokens)."""
    if rollouts is None or "entropy" not in rollouts or not len(rollouts):
        return None
    parts = [np.asarray(e, dtype=np.float64) for e in rollouts["entropy"] if e is not None]
    values = np.concatenate(parts) if parts else np.empty(0)
    values = values[np.isfinite(values)]
    return values if values.size else None


class Tracker(Protocol):
    """What a writer's ``Trackers`` ask of one tracker: a step's numbers, then closing (flushing) once."""

    name: str

    def log(
        self, step: int, metrics: dict[str, float], entropies: np.ndarray | None, table: pd.DataFrame | None
    ) -> None: ...

    def close(self) -> None: ...


class TensorBoardTracker:
    """Event files in RUN_DIR/tensorboard: scalars by metric name, the histogram ``entropy``, the
    config as text. ``purge_step``: a resumed run's steps from there on replace those written before."""

    name = "tensorboard"

    def __init__(self, run_dir: Path, config: dict, first_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=first_step or None)
        if not first_step:
            shown = "\n".join(f"    {k}: {v!r}" for k, v in config.items())
            self.writer.add_text("config", shown, 0)

    def log(self, step: int, metrics: dict[str, float], entropies: np.ndarray | None, table: pd.DataFrame | None):
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        if entropies is not None:
            self.writer.add_histogram("entropy", entropies, step)
        self.writer.flush()  # a reader (tensorboard --logdir) sees the step now, as metrics.jsonl's readers do

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A W&B run in RUN_DIR/wandb: every metric at its step, the histogram ``entropy`` and the table
    ``responses``. Offline unless WANDB_MODE names another mode: nothing reaches the network unasked.
    ``reinit="create_new"``: several runs in one process (a study, TRL's own W&B run) do not collide."""

    name = "wandb"

    def __init__(self, run_dir: Path, config: dict, first_step: int):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            dir=str(run_dir),
            mode=os.environ.get("WANDB_MODE", "offline"),  # type: ignore[arg-type]
            project=os.environ.get("WANDB_PROJECT", "exploration-workbench"),
            name=run_dir.resolve().name,
            group=run_dir.resolve().name,
            config=config,
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"),
        )

    def log(self, step: int, metrics: dict[str, float], entropies: np.ndarray | None, table: pd.DataFrame | None):
        extra: dict[str, Any] = {}
        if entropies is not None:
            extra["entropy"] = self.wandb.Histogram(np_histogram=np.histogram(entropies, bins=64))
        if table is not None:
            extra["responses"] = self.wandb.Table(dataframe=table)
        self.run.log({**metrics, **extra}, step=step)

    def close(self) -> None:
        self.run.finish()


# each opened as TRACKER(run_dir, config, first_step) at the first step a writer records
TRACKERS: dict[str, Callable[[Path, dict, int], Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "wandb": WandbTracker,
}
ALLOWED = f"a list of tracker names ({', '.join(TRACKERS)}), one name, names separated by commas, 'all' or 'none'"


class Trackers:
    """The trackers a writer reports to, opened at the first step it records (a new run's or a resumed
    one's, so a resume reports too) and closed with the writer. One failing is warned about once and
    dropped; the others and the run carry on."""

    def __init__(self, run_dir: Path, wanted: list[str], config: dict):
        self.run_dir, self.wanted, self.config = Path(run_dir), list(wanted), config
        self.open: list[Tracker] | None = None  # None: not opened yet
        self.first_step: int | None = None

    def record(self, step: int, rollouts: pd.DataFrame | None, row: dict) -> None:
        if self.open is None:
            self.first_step = step
            self.open = [t for t in (self._opened(name, step) for name in self.wanted) if t is not None]
        if not self.open:
            return
        metrics, entropies = scalars(row), token_entropies(rollouts)
        due = rollouts is not None and (step - (self.first_step or 0)) % TABLE_EVERY == 0
        table = responses_table(rollouts) if due else None
        for tracker in list(self.open):
            self._attempt(tracker, "report step", functools.partial(tracker.log, step, metrics, entropies, table))

    def close(self) -> None:
        opened, self.open = self.open or [], None
        for tracker in opened:
            self._attempt(tracker, "close", tracker.close)

    def _opened(self, name: str, step: int) -> Tracker | None:
        try:
            return TRACKERS[name](self.run_dir, self.config, step)
        except ImportError as error:
            _warn(name, f"it is not installed ({error}; {INSTALL_HINT})")
        except Exception as error:
            _warn(name, f"it could not start ({type(error).__name__}: {error})")
        return None

    def _attempt(self, tracker: Tracker, what: str, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception as error:
            _warn(tracker.name, f"it failed to {what} ({type(error).__name__}: {error})")
            if self.open is not None and tracker in self.open:
                self.open.remove(tracker)
                with contextlib.suppress(Exception):  # let go of its files and threads, if it still can
                    tracker.close()


def responses_table(rollouts: pd.DataFrame) -> pd.DataFrame:
    """The first ``TABLE_ROWS`` responses of a step: prompt, completion, reward, length, mean entropy."""
    shown = rollouts.head(TABLE_ROWS)
    table = shown[[c for c in TABLE_COLUMNS if c in shown]].copy()
    table["mean_entropy"] = [float(np.mean(e)) if e is not None and len(e) else math.nan for e in shown["entropy"]]
    return table.reset_index(drop=True)


def _warn(name: str, why: str) -> None:
    warnings.warn(
        f"report_to={name}: {why}; {name} stops reporting this run, whose own files (metrics.jsonl) carry on",
        RuntimeWarning,
        stacklevel=4,
    )
