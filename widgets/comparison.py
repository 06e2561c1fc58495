"""RunComparison: one metric of several runs overlaid, from trainers or run directories, the
directories followed live while other processes write them."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import ipywidgets as w
import pandas as pd

from workbench.run_follower import RunFollower
from workbench.store import RunStore

from ._live import (FULL_WIDTH, Every, PollGuard, Polled, downsample, esc, metric_title, numeric_columns, set_status,
                    status_line, step_ticks)
from .following import FOLLOW_INTERVAL, is_run_directory
from .live_figure import LiveFigure
from .style import panel_layout, run_color


class RunComparison(Polled, w.VBox):
    """Overlay a metric of several runs: a metric selector over the numeric metrics every run
    has, and an exponential-moving-average smoothing slider (0 = raw).

    ``runs``: trainers (their ``history``) and run directories (their ``metrics.jsonl``), as a
    list (labelled by method and directory name) or a {label: run} mapping. Run directories are
    followed (``workbench.run_follower.RunFollower``, which never locks or writes them): polled
    every ``interval`` seconds, or at once by ``poll()``; the status line says where each is.
    Reload re-reads every run, trainers included; ``close()`` stops following.
    """

    _timer: Every | None = None

    def __init__(self, runs: Sequence | Mapping, metric: str = "reward_mean", smoothing: float = 0.0,
                 max_points: int = 2000, interval: float = FOLLOW_INTERVAL):
        items = list(runs.items()) if isinstance(runs, Mapping) else [(None, run) for run in runs]
        if not items:
            raise ValueError("runs=[] is not allowed: pass at least one trainer or run directory")
        for _, run in items:
            if not is_run_directory(run) and not hasattr(run, "history"):
                raise TypeError(f"run={type(run).__name__} is not allowed: a workbench Trainer or a run directory "
                                "(str or Path)")
        self.runs = items
        self.labels = _unique([str(label) if label is not None else _label(run, i)
                               for i, (label, run) in enumerate(items)])
        self.max_points = max_points
        self.frames: dict[str, pd.DataFrame] = {}
        self.followers: dict[str, RunFollower] = {}  # the run directories, by label
        self._rows: dict[str, list[dict]] = {}  # the rows each followed directory has had
        self._guard = PollGuard(self._show_status)  # the timer's polls, direct ones and reloads, one at a time
        self.metric = w.Dropdown(description="metric", layout=w.Layout(width="360px"))
        self.smoothing = w.FloatSlider(value=smoothing, min=0.0, max=0.99, step=0.01, description="smoothing",
                                       tooltip="exponential moving average weight (0 = raw values)",
                                       continuous_update=False, layout=w.Layout(width="360px"))
        self.reload_button = w.Button(description="Reload", icon="refresh", tooltip="read every run again")
        self.reload_button.on_click(lambda _: self.reload())
        self.status = status_line()
        self.figure = LiveFigure(layout=panel_layout("", height=380, width=FULL_WIDTH, hovermode="x unified",
                                                           xaxis={"title": {"text": "step"}}))
        for i, label in enumerate(self.labels):  # a faint raw line under each smoothed one
            color = run_color(i)  # the runs' colours in any notebook figure of the same runs
            self.figure.add_scatter(name=esc(label), legendgroup=str(i), showlegend=False, mode="lines",
                                    line={"color": color, "width": 1}, opacity=0.3, hoverinfo="skip", x=[], y=[])
            self.figure.add_scatter(name=esc(label), legendgroup=str(i), mode="lines", line={"color": color},
                                    x=[], y=[])
        self.reload(metric)
        self.metric.observe(lambda _: self._draw(), names="value")
        self.smoothing.observe(lambda _: self._draw(), names="value")
        super().__init__([w.HBox([self.metric, self.smoothing, self.reload_button]), self.status, self.figure])
        if self.followers:
            self._timer = Every(interval, self._tick, "RunComparison")

    def reload(self, metric: str | None = None) -> None:
        """Read every run again from its start; keep the selected metric (or select ``metric``) if
        all have it."""
        with self._guard.lock:
            self.followers = {label: RunFollower(run) for label, (_, run) in zip(self.labels, self.runs)
                              if is_run_directory(run)}
            self._rows = {label: [] for label in self.followers}
            self.frames = {label: pd.DataFrame() if label in self.followers else numeric_columns(run.history)
                           for label, (_, run) in zip(self.labels, self.runs)}
            self._poll_directories()
        self._select(metric)

    def poll(self) -> None:
        """Read what each run directory wrote since the last poll, and draw it."""
        if self._guard.run(self._poll_directories):
            self._select(None)

    def _poll_directories(self) -> bool:
        """Add each directory's new rows to its frame; whether any frame changed."""
        changed = False
        for label, follower in self.followers.items():
            update = follower.poll()
            if update.restarted:  # resumed from an earlier checkpoint: its rows are the history now
                self._rows[label] = []
            if update.rows or update.restarted:
                self._rows[label] += update.rows
                self.frames[label] = numeric_columns(pd.DataFrame(self._rows[label]))
                changed = True
        return changed

    def _select(self, metric: str | None) -> None:
        """Offer the metrics every run has; keep the selected one (or select ``metric``); draw."""
        filled = [f for f in self.frames.values() if len(f)]
        common = [c for c in filled[0].columns if c != "step" and all(c in f for f in filled[1:])] if filled else []
        want = metric or self.metric.value
        self.metric.options = common
        if common:
            self.metric.value = want if want in common else common[0]
        self._draw()

    def series(self, label: str) -> tuple[list, list]:
        """(steps, smoothed values) of the selected metric for one run, as drawn."""
        frame = self.frames[label]
        if self.metric.value is None or self.metric.value not in frame:
            return [], []
        steps = frame["step"].tolist() if "step" in frame else list(range(len(frame)))
        return steps, ema(frame[self.metric.value].tolist(), self.smoothing.value)

    def _draw(self) -> None:
        metric = self.metric.value
        drawn_steps: list = []
        with self.figure.batch_update():
            for i, label in enumerate(self.labels):
                raw, smooth = self.figure.data[2 * i], self.figure.data[2 * i + 1]
                frame = self.frames[label]
                steps, values = self.series(label)
                drawn_steps += steps
                raw_values = frame[metric].tolist() if values else []
                raw.x, raw.y = downsample(steps, raw_values, self.max_points)
                raw.visible = self.smoothing.value > 0  # the raw line only adds something under a smoothed one
                smooth.x, smooth.y = downsample(steps, values, self.max_points)
            self.figure.layout.yaxis.title.text = metric_title(metric) if metric else ""
            self.figure.layout.xaxis.update(step_ticks(drawn_steps))
        self._show_status()

    def _show_status(self) -> None:
        """How many runs, where each followed directory is, and what is wrong."""
        parts = [f"{len(self.labels)} runs"]
        parts += [f"{label}: {follower.describe()}" for label, follower in self.followers.items()]
        empty = [label for label, f in self.frames.items() if not len(f) and label not in self.followers]
        if empty:
            parts.append(f"no steps yet: {', '.join(empty)}")
        problem = "no metric common to every run" if self.metric.value is None and any(
            len(f) for f in self.frames.values()) else None
        if self.error is not None:
            problem = f"{type(self.error).__name__}: {self.error}"
        set_status(self.status, "; ".join(parts + ([problem] if problem else [])), error=problem is not None)

    def close(self) -> None:
        """Stop following the run directories, and close the widget."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().close()


def ema(values: Sequence[float], weight: float) -> list[float]:
    """Exponential moving average s_t = w s_(t-1) + (1 - w) x_t, s_0 = x_0; a missing value
    (NaN) stays missing and leaves the average as it was."""
    out, last = [], None
    for x in values:
        if x is None or math.isnan(x):
            out.append(math.nan)
            continue
        last = x if last is None else weight * last + (1 - weight) * x
        out.append(last)
    return out


def _label(run, index: int) -> str:
    """Method and run directory name, e.g. ``eepo · run-3``."""
    if is_run_directory(run):  # a run not started yet has no config to name its method
        store = RunStore(run)
        started = (store.dir / "config.yaml").exists()
        return f"{store.config().method} · {store.dir.name}" if started else store.dir.name
    store = getattr(run, "store", None)
    return f"{run.cfg.method} · {store.dir.name if store is not None else f'run {index}'}"


def _unique(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out
