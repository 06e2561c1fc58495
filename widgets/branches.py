"""Branches: the runs a ``HyperparameterPanel`` forked, one click from training, and their curves
beside the parent's.

Each branch shows what it changed, the step it started from and its run directory, with a Train
button that trains it on a thread for the steps given; below them a ``RunComparison`` of the parent
and every branch follows them all as they train (the parent included, whoever trains it).
"""

from __future__ import annotations

import threading
from pathlib import Path

import ipywidgets as w

from ._live import busy, esc, set_status, status_line
from .comparison import RunComparison
from .style import FONT_SIZE, run_color

TRAIN_STEPS = 10  # the steps box's first value


class Branches(w.VBox):
    """The branches forked from ``parent`` (a trainer), in the order they were made."""

    def __init__(self, parent):
        self.parent = parent
        self.rows: list[BranchRow] = []
        self.comparison: RunComparison | None = None
        super().__init__([w.HTML(f"<i style='font-size:{FONT_SIZE}px'>no branch yet: change a value, then Fork</i>")])
        self.add_class("wb-branches")

    def add(self, branch, changes: dict, out_dir: Path | None) -> None:
        """Show ``branch`` (made with ``changes``, writing ``out_dir``) and compare it with the others."""
        self.rows.append(BranchRow(len(self.rows), branch, changes, out_dir))
        if self.comparison is not None:
            self.comparison.close()
        runs = {"parent": self.parent, **{f"fork {row.index}": row.branch for row in self.rows}}
        self.comparison = RunComparison(runs)
        self.children = [*(row.box for row in self.rows), self.comparison]

    def close(self) -> None:
        if self.comparison is not None:
            self.comparison.close()
        super().close()


def summary(changes: dict) -> str:
    """``name=value, ...`` of a change of config."""
    return ", ".join(f"{name}={value!r}" for name, value in changes.items())


def next_fork_dir(trainer, fork_dir: Path | None) -> Path | None:
    """The next free ``fork_dir/fork-N``; without a fork_dir, beside the trainer's run directory
    (``RUN-fork-N``); None for a trainer that writes none (its branch too lives in memory)."""
    store = trainer.store
    if fork_dir is not None:
        folder, prefix = fork_dir, "fork-"
    elif store is not None:
        folder, prefix = store.dir.parent, f"{store.dir.name}-fork-"
    else:
        return None
    index = 0
    while (folder / f"{prefix}{index}").exists():
        index += 1
    return folder / f"{prefix}{index}"


class BranchRow:
    """One branch: what it is (``box``), a steps box and a Train button that trains it on a thread."""

    def __init__(self, index: int, branch, changes: dict, out_dir: Path | None):
        self.index, self.branch = index, branch
        changed = summary(changes) or "the parent's values"
        where = f"run directory <code>{esc(out_dir)}</code>" if out_dir is not None else "in memory (no run directory)"
        title = (
            f"<b style='color:{run_color(index + 1)}'>fork {index}</b> from step {branch.step_index}: "
            f"{esc(changed)} · {where}"
        )
        self.steps = w.BoundedIntText(
            value=TRAIN_STEPS, min=1, max=10**6, description="steps", layout=w.Layout(width="150px")
        )
        self.train_button = w.Button(description="Train", icon="play", tooltip=f"train fork {index} for these steps")
        self.train_button.on_click(lambda _: self.train(wait=False))
        self.status = status_line()
        self.box = w.VBox(
            [
                w.HTML(f"<span style='font-size:{FONT_SIZE}px'>{title}</span>"),
                w.HBox([self.steps, self.train_button, self.status]),
            ]
        )
        self._thread: threading.Thread | None = None

    def train(self, wait: bool = True) -> None:
        """Train the branch for the steps in the box (on a thread unless ``wait``)."""
        if self._thread is not None and self._thread.is_alive():
            return
        steps = self.steps.value
        self.train_button.disabled = True
        self.status.value = busy(f"training {steps} steps from step {self.branch.step_index}")
        self._thread = threading.Thread(target=self._train, args=(steps,), daemon=True, name=f"fork-{self.index}")
        self._thread.start()
        if wait:
            self._thread.join()

    def _train(self, steps: int) -> None:
        try:
            self.branch.run(steps, progress=False, label=f"fork {self.index}")
            set_status(self.status, f"trained to step {self.branch.step_index}")
        except Exception as error:  # shown where the button is; the branch keeps what it trained
            set_status(self.status, f"training stopped: {error}", error=True)
        finally:
            self.train_button.disabled = False
