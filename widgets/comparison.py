"""RunComparison: one metric of several runs overlaid, from trainers or run directories, each read
through its feed (``workbench.run.source``) and followed live while it trains."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import ipywidgets as w
import pandas as pd

from workbench.metrics import registry
from workbench.metrics.registry import REWARD_MEAN, STEP
from workbench.run.source import RunSource, open_run

from ._live import Polled, PollGuard, downsample, esc, numeric_columns, set_status, status_line, step_ticks
from .following import FOLLOW_INTERVAL
from .live_figure import LiveFigure
from .style import panel_layout, run_color


class RunComparison(Polled, w.VBox):
    """Overlay a metric of several runs: a metric selector over the numeric metrics every run
    has, and an exponential-moving-average smoothing slider (0 = raw).

    ``runs``: trainers and run directories, as a list (labelled by method and directory name) or a
    {label: run} mapping. Each is followed (``workbench.run.source.open_run``: a run directory is
    never locked or written): polled after each phase of a trainer and every ``interval`` seconds
    of a directory, or at once by ``poll()``; the status line says where each is. Reload reads
    every run again from its start; ``close()`` stops following.
    """

    def __init__(
        self,
        runs: Sequence | Mapping,
        metric: str = REWARD_MEAN,
        smoothing: float = 0.0,
        max_points: int = 2000,
        interval: float = FOLLOW_INTERVAL,
    ):
        items = list(runs.items()) if isinstance(runs, Mapping) else [(None, run) for run in runs]
        if not items:
            raise ValueError("runs=[] is not allowed: pass at least one trainer or run directory")
        self.runs = [run for _, run in items]
        self.interval, self.max_points = interval, max_points
        self.sources: list[RunSource] = []
        self._stops: list[Callable[[], None]] = []
        self._guard = PollGuard(self._show_status)  # the sources' polls, direct ones and reloads, one at a time
        self._open()
        self.labels = _unique(
            [
                str(label) if label is not None else _label(source, i)
                for i, ((label, _), source) in enumerate(zip(items, self.sources))
            ]
        )
        self._build_controls(smoothing)
        self.figure = self._build_figure()
        self._select(metric)
        self.metric.observe(lambda _: self._draw(), names="value")
        self.smoothing.observe(lambda _: self._draw(), names="value")
        super().__init__([w.HBox([self.metric, self.smoothing, self.reload_button]), self.status, self.figure])
        self._watch()

    def _build_controls(self, smoothing: float) -> None:
        """The metric selector, the smoothing slider, Reload and the status line."""
        self.metric = w.Dropdown(description="metric", layout=w.Layout(width="360px"))
        self.smoothing = w.FloatSlider(
            value=smoothing,
            min=0.0,
            max=0.99,
            step=0.01,
            description="smoothing",
            tooltip="exponential moving average weight (0 = raw values)",
            continuous_update=False,
            layout=w.Layout(width="360px"),
        )
        self.reload_button = w.Button(description="Reload", icon="refresh", tooltip="read every run again")
        self.reload_button.on_click(lambda _: self.reload())
        self.status = status_line()

    def _build_figure(self) -> LiveFigure:
        """The empty figure: a faint raw line and a smoothed one for each run, in the run's colour."""
        figure = LiveFigure(
            layout=panel_layout("", height=380, hovermode="x unified", xaxis={"title": {"text": "step"}})
        )
        for i, label in enumerate(self.labels):  # a faint raw line under each smoothed one
            color = run_color(i)  # the runs' colours in any notebook figure of the same runs
            figure.add_scatter(
                name=esc(label),
                legendgroup=str(i),
                showlegend=False,
                mode="lines",
                line={"color": color, "width": 1},
                opacity=0.3,
                hoverinfo="skip",
                x=[],
                y=[],
            )
            figure.add_scatter(name=esc(label), legendgroup=str(i), mode="lines", line={"color": color}, x=[], y=[])
        return figure

    @property
    def frames(self) -> dict[str, pd.DataFrame]:
        """Each run's numeric metrics so far, by label."""
        return dict(zip(self.labels, self._frames))

    def _open(self) -> None:
        """Open every run's feed and read it from its start."""
        self.sources = []
        try:
            for run in self.runs:
                self.sources.append(open_run(run))
        except TypeError:  # a run that is neither: the trainers opened before it stop listening
            self._close_sources()
            raise
        self._rows: list[list[dict]] = [[] for _ in self.sources]
        self._frames = [pd.DataFrame() for _ in self.sources]
        self._poll_sources()

    def _watch(self) -> None:
        self._stops = [source.watch(self._tick, self.interval) for source in self.sources]

    def reload(self, metric: str | None = None) -> None:
        """Read every run again from its start; keep the selected metric (or select ``metric``) if
        all have it."""
        with self._guard.lock:
            self._close_sources()
            self._open()
        self._watch()
        self._select(metric)

    def poll(self) -> None:
        """Read what each run recorded since the last poll, and draw it."""
        if self._guard.run(self._poll_sources):
            self._select(None)

    def _poll_sources(self) -> bool:
        """Add each run's new rows to its frame; whether any frame changed."""
        changed = False
        for i, source in enumerate(self.sources):
            update = source.poll()
            if update.restarted:  # resumed from an earlier checkpoint: its rows are the history now
                self._rows[i] = []
            if update.rows or update.restarted:
                self._rows[i] += update.rows
                self._frames[i] = numeric_columns(pd.DataFrame(self._rows[i]))
                changed = True
        return changed

    def _select(self, metric: str | None) -> None:
        """Offer the metrics every run has; keep the selected one (or select ``metric``); draw."""
        filled = [f for f in self._frames if len(f)]
        common = [c for c in filled[0].columns if c != STEP and all(c in f for f in filled[1:])] if filled else []
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
        steps = frame[STEP].tolist() if STEP in frame else list(range(len(frame)))
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
            self.figure.layout.yaxis.title.text = registry.title(metric) if metric else ""
            self.figure.layout.xaxis.update(step_ticks(drawn_steps))
        self._show_status()

    def _show_status(self) -> None:
        """How many runs, where each is, and what is wrong."""
        parts = [f"{len(self.labels)} runs"]
        parts += [f"{label}: {source.describe()}" for label, source in zip(self.labels, self.sources)]
        problem = (
            "no metric common to every run" if self.metric.value is None and any(len(f) for f in self._frames) else None
        )
        if self.error is not None:
            problem = f"{type(self.error).__name__}: {self.error}"
        set_status(self.status, "; ".join(parts + ([problem] if problem else [])), error=problem is not None)

    def _close_sources(self) -> None:
        for stop in self._stops:
            stop()
        for source in self.sources:
            source.close()
        self._stops = []

    def close(self) -> None:
        """Stop following the runs, and close the widget."""
        self._close_sources()
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


def _label(source: RunSource, index: int) -> str:
    """Method and run directory name, e.g. ``eepo · run-3``; a run not started yet has no config to
    name its method, a trainer that writes no directory is ``run <index>``."""
    where = source.location.name if source.location is not None else f"run {index}"
    return f"{source.config.method} · {where}" if source.config is not None else where


def _unique(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out
