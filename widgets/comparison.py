"""RunComparison: one metric of several runs overlaid, from trainers or run directories."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import ipywidgets as w
import pandas as pd

from workbench.store import RunStore

from ._live import FULL_WIDTH, downsample, esc, metric_title, set_status, status_line, step_ticks
from .live_figure import LiveFigure
from .style import panel_layout, run_color


class RunComparison(w.VBox):
    """Overlay a metric of several runs: a metric selector over the numeric metrics every run
    has, and an exponential-moving-average smoothing slider (0 = raw).

    ``runs``: trainers (their ``history``) and run directories (their ``metrics.jsonl``), as a
    list (labelled by method and directory name) or a {label: run} mapping. Reload re-reads them.
    """

    def __init__(self, runs: Sequence | Mapping, metric: str = "reward_mean", smoothing: float = 0.0,
                 max_points: int = 2000):
        items = list(runs.items()) if isinstance(runs, Mapping) else [(None, run) for run in runs]
        if not items:
            raise ValueError("runs=[] is not allowed: pass at least one trainer or run directory")
        for _, run in items:
            if not isinstance(run, (str, Path)) and not hasattr(run, "history"):
                raise TypeError(f"run={type(run).__name__} is not allowed: a workbench Trainer or a run directory "
                                "(str or Path)")
        self.runs = items
        self.labels = _unique([str(label) if label is not None else _label(run, i)
                               for i, (label, run) in enumerate(items)])
        self.max_points = max_points
        self.frames: dict[str, pd.DataFrame] = {}
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

    def reload(self, metric: str | None = None) -> None:
        """Read every run again; keep the selected metric (or select ``metric``) if all have it."""
        self.frames = {label: _numeric(_metrics(run)) for label, (_, run) in zip(self.labels, self.runs)}
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
        empty = [label for label, f in self.frames.items() if not len(f)]
        if metric is None:
            set_status(self.status, "no metric common to every run", error=True)
        else:
            waiting = f"; no steps yet: {', '.join(empty)}" if empty else ""
            set_status(self.status, f"{len(self.labels)} runs{waiting}")


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


def _metrics(run) -> pd.DataFrame:
    if isinstance(run, (str, Path)):
        return pd.DataFrame(RunStore(run).read_metrics())
    return run.history


def _numeric(frame: pd.DataFrame) -> pd.DataFrame:
    """The numeric columns: metrics.jsonl stores NaN as null and infinities as "inf" strings."""
    out = frame.apply(pd.to_numeric, errors="coerce")
    return out.loc[:, out.notna().any() | frame.isna().all()]


def _label(run, index: int) -> str:
    """Method and run directory name, e.g. ``eepo · run-3``."""
    if isinstance(run, (str, Path)):
        return f"{RunStore(run).config().method} · {Path(run).name}"
    store = getattr(run, "store", None)
    return f"{run.cfg.method} · {store.dir.name if store is not None else f'run {index}'}"


def _unique(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out
