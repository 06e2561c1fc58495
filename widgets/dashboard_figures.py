"""DashboardFigures: the figures of a ``TrainingDashboard``, in tabs, and what they draw.

Five panels every run has (reward, entropy, KL, diversity, the sampler against the training pass),
and a panel for each method group of the metric registry (``workbench.metrics.registry``) that
appears once the rows hold its metrics: nothing here knows which method records what. A series is
(metric, legend name, colour, dash, secondary y); colours are the quantities of ``style.QUANTITY``:
reward blue, entropy green, KL purple, diversity orange.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import ipywidgets as W
import numpy as np
from plotly.subplots import make_subplots

from workbench.metrics import fit_reward_entropy, registry
from workbench.metrics.entropy import FIT_MIN_POINTS, HIGH_ENTROPY_THRESHOLD
from workbench.metrics.registry import (
    ACCURACY,
    CLIP_FRACTION,
    DISTINCT_CORRECT_STRATEGIES,
    DISTINCT_STRATEGIES,
    ENTROPY_MEAN,
    ENTROPY_P50,
    ENTROPY_P95,
    FRAC_REWARD_ZERO_STD,
    GROUPS,
    HIGH_ENTROPY_TOKEN_FRACTION,
    IMPORTANCE_SAMPLING_RATIO_MAX,
    IMPORTANCE_SAMPLING_RATIO_MIN,
    KL,
    PARSED_FRACTION,
    REWARD_MEAN,
    SAMPLING_LOGP_DIFFERENCE_MAX,
    SAMPLING_LOGP_DIFFERENCE_MEAN,
    SKIPPED,
    STEP,
    UNIQUE_ANSWERS,
)

from ._live import figure_row
from .live_figure import LiveFigure
from .style import (
    BLACK,
    FONT_SIZE,
    GREY,
    ORANGE,
    PURPLE,
    QUANTITY,
    STATES,
    panel_layout,
    rgba,
    series_color,
)
from .thinned_history import ThinnedHistory

SERIES = {
    "reward": [
        (REWARD_MEAN, "reward (mean)", QUANTITY["reward"], "solid", False),
        (ACCURACY, "accuracy", BLACK, "dot", False),
        (PARSED_FRACTION, "parsed (well-formed)", GREY, "dot", False),
        (FRAC_REWARD_ZERO_STD, "groups with no reward spread", ORANGE, "dash", False),
    ],
    "entropy": [
        (ENTROPY_MEAN, "mean", QUANTITY["entropy"], "solid", False),
        (HIGH_ENTROPY_TOKEN_FRACTION, f"tokens above {HIGH_ENTROPY_THRESHOLD} nats", BLACK, "dot", True),
    ],
    "kl": [
        (KL, f"KL to reference ({KL.unit})", QUANTITY["kl"], "solid", False),
        (CLIP_FRACTION, "clip fraction", QUANTITY["clip"], "dash", True),
    ],
    "diversity": [
        (DISTINCT_STRATEGIES, "distinct strategies", ORANGE, "solid", False),
        (DISTINCT_CORRECT_STRATEGIES, "distinct correct strategies", ORANGE, "dot", False),
        (UNIQUE_ANSWERS, "unique answers", PURPLE, "solid", False),
    ],
    "sampling": [
        (SAMPLING_LOGP_DIFFERENCE_MEAN, "|Δ log-prob| mean", QUANTITY["kl"], "solid", False),
        (SAMPLING_LOGP_DIFFERENCE_MAX, "|Δ log-prob| max", QUANTITY["kl"], "dot", False),
        (IMPORTANCE_SAMPLING_RATIO_MIN, "ratio min", QUANTITY["clip"], "dash", True),
        (IMPORTANCE_SAMPLING_RATIO_MAX, "ratio max", QUANTITY["reward"], "dash", True),
    ],
}
BAND = (ENTROPY_P50, ENTROPY_P95)
# each panel's title, its left axis and, where it has one, its right axis: title, tick format, range mode
TITLES = {
    "reward": (GROUPS["reward"].title, "reward · fraction", None),
    "entropy": (
        f"{GROUPS['entropy'].title} (mean, p50–p95 band)",
        f"entropy ({ENTROPY_MEAN.unit})",
        (f"share of tokens above {HIGH_ENTROPY_THRESHOLD} nats", ".0%", "tozero"),
    ),
    "kl": ("KL and clip fraction", f"KL ({KL.unit})", ("clip fraction", ".1%", "nonnegative")),
    "diversity": (GROUPS["diversity"].title, GROUPS["diversity"].unit, None),
    "sampling": (
        GROUPS["sampling"].title,
        f"|Δ log-prob| ({SAMPLING_LOGP_DIFFERENCE_MEAN.unit})",
        ("importance ratio", ".3f", "normal"),
    ),
}
# the main view fits a 1,366 x 768 laptop screen: two panels at a time, the others a tab away
TABS = {
    "reward · entropy": ("reward", "entropy"),
    "KL · diversity": ("kl", "diversity"),
    "sampler": ("sampling",),
}
METHOD_PANELS = {g.name: registry.panel_metrics(g.name) for g in registry.method_groups()}
COLUMNS = (
    STEP,
    *BAND,
    *(s[0] for specs in SERIES.values() for s in specs),
    *(m for metrics in METHOD_PANELS.values() for m in metrics),
)
# below this share of the reward's variance explained, the fit is not extrapolated to a ceiling
FIT_MIN_R2 = 0.5


class DashboardFigures:
    """The figures (``figures``, by panel name, in ``tabs``) of a history of metrics rows, at most
    ``max_points`` points a series, and the fit of the reward on the entropy (``fit``, shown in
    ``fit_line`` while ``fit_control`` is ticked).

    ``extend(rows)`` adds rows, ``restart()`` forgets them, ``draw()`` draws what was added;
    ``trace(column)`` is the trace that draws a column; ``skipped`` lists (step, reward) of every
    step whose update was skipped (non-finite loss or gradient), kept whole, never thinned."""

    def __init__(self, max_points: int, fit: bool, on_fit_change):
        self.max_points = max_points
        self.fit: dict[str, float] | None = None
        self.restart()
        self.fit_control = W.Checkbox(
            value=fit, description="fit R = −a·exp(H) + b", indent=False, layout=W.Layout(width="auto")
        )
        self.fit_control.observe(lambda _: on_fit_change(), names="value")
        self.fit_line = W.HTML()
        self.figures = {name: core_figure(name) for name in SERIES}
        self.tabs = W.Tab(
            children=[figure_row(*(self.figures[n] for n in names)) for names in TABS.values()], titles=tuple(TABS)
        )

    def restart(self) -> None:
        self.history = ThinnedHistory(COLUMNS, self.max_points)
        self.skipped: list[tuple[int, float]] = []  # (step, its reward mean) of each skipped update
        self.last_row: Mapping | None = None

    def extend(self, rows: list[Mapping]) -> None:
        self.history.extend(rows)
        for row in rows:
            if row.get(SKIPPED):  # the trainer's flag: this step's update was not applied
                reward = row.get(REWARD_MEAN)
                self.skipped.append((int(row[STEP]), float("nan") if reward is None else float(reward)))
        self.last_row = rows[-1] if rows else self.last_row

    def trace(self, column: str):
        """The trace that draws a history column (``meta`` holds the column name)."""
        for fig in self.figures.values():
            for trace in fig.data:
                if trace.meta == column:
                    return trace
        raise KeyError(
            f"column={column!r} has no trace; drawn: {', '.join(t.meta for f in self.figures.values() for t in f.data)}"
        )

    def draw(self) -> None:
        h = self.history
        x = h.array(STEP)
        self._add_method_panels()
        # integer step ticks while there are few steps (plotly would tick 0.5, 1.5, ...)
        dtick = 1 if len(h) and x[-1] - x[0] < 10 else None
        for fig in self.figures.values():
            with fig.batch_update():
                fig.layout.xaxis.dtick = dtick
                for trace in fig.data:
                    if trace.meta in h.columns:
                        trace.x, trace.y = x, h.array(trace.meta)
        self._draw_skips()
        self._label_reward()
        self._draw_fit(x)

    def close(self) -> None:
        for fig in self.figures.values():
            fig.close()

    def _add_method_panels(self) -> None:
        """A tab for each method group whose metrics the rows hold, the first time they do."""
        for group, metrics in METHOD_PANELS.items():
            if group not in self.figures and any(m in self.history.present for m in metrics):
                self.figures[group] = method_figure(group, metrics)
                self.tabs.children = [*self.tabs.children, self.figures[group]]
                self.tabs.set_title(len(self.tabs.children) - 1, GROUPS[group].title)

    def _label_reward(self) -> None:
        """With 0/1 rewards (countdown) accuracy is the reward: one line, named for both, instead
        of the accuracy line hiding the reward line under it."""
        h = self.history
        present = ACCURACY in h.present
        same = present and np.allclose(h.array(ACCURACY), h.array(REWARD_MEAN), equal_nan=True)
        with self.figures["reward"].batch_update():
            self.trace(REWARD_MEAN).name = "reward = accuracy (0/1 rewards)" if same else "reward (mean)"
            self.trace(ACCURACY).visible = present and not same

    def _draw_skips(self) -> None:
        marker = self.trace("skipped_update")
        with self.figures["reward"].batch_update():
            marker.visible = bool(self.skipped)
            marker.x, marker.y = [s for s, _ in self.skipped], [r for _, r in self.skipped]

    def _draw_fit(self, x: np.ndarray) -> None:
        h = self.history
        self.fit = fit_reward_entropy(h.array(ENTROPY_MEAN), h.array(REWARD_MEAN)) if len(h) else None
        fit = self.fit
        meaningful = fit is not None and fit["r2"] >= FIT_MIN_R2
        ceiling = self.trace("fit_ceiling")
        show = self.fit_control.value and meaningful
        with self.figures["reward"].batch_update():
            ceiling.visible = show
            if show and fit is not None:
                ceiling.x, ceiling.y = [x[0], x[-1]], [fit["ceiling"]] * 2
        self.fit_line.value = _small(self._fit_text()) if self.fit_control.value else ""

    def _fit_text(self) -> str:
        f = self.fit
        if f is None:
            return f"fit R = −a·exp(H) + b: needs {FIT_MIN_POINTS} steps with different entropies"
        if f["r2"] < FIT_MIN_R2:
            return (
                f"fit R = −a·exp(H) + b over {f['n']} steps: R² = {f['r2']:.2f}, entropy explains too little "
                f"of the reward yet to predict a ceiling (shown from R² ≥ {FIT_MIN_R2:g})"
            )
        return (
            f"fit R = −a·exp(H) + b over {f['n']} steps: a = {f['a']:.3g}, b = {f['b']:.3g}, "
            f"R² = {f['r2']:.2f} · predicted ceiling b − a = <b>{f['ceiling']:.3f}</b> (reward at entropy 0)"
        )


def core_figure(name: str) -> LiveFigure:
    """The empty panel ``name`` of ``SERIES`` with its traces (``meta`` = the history column each draws)."""
    title, y_title, right = TITLES[name]
    secondary = right is not None
    fig = LiveFigure(make_subplots(specs=[[{"secondary_y": True}]])) if secondary else LiveFigure()
    fig.update_layout(**panel_layout(title, right_axis=secondary))
    fig.update_xaxes(title_text="step", rangemode="tozero")
    fig.update_yaxes(title_text=y_title, exponentformat="e", secondary_y=False if secondary else None)
    if right is not None:
        right_title, right_format, right_range = right
        fig.update_yaxes(
            title_text=right_title,
            secondary_y=True,
            showgrid=False,
            rangemode=right_range,
            tickformat=right_format,
            tickmode="auto",
        )
    if name == "entropy":
        _add_entropy_band(fig)
    if name == "reward":
        _add_reward_markers(fig)
    for spec in SERIES[name]:
        _add_series(fig, spec)
    return fig


def _add_entropy_band(fig: LiveFigure) -> None:
    """The entropy panel's p50–p95 band (p95 the upper edge, p50 filled up to it), added before the
    mean so the mean draws on top."""
    band = QUANTITY["entropy"]
    fig.add_scatter(
        x=[],
        y=[],
        meta=BAND[1],
        name="p95",
        mode="lines",
        line={"width": 0.5, "color": band},
        showlegend=False,
        hoverinfo="skip",
    )
    fig.add_scatter(
        x=[],
        y=[],
        meta=BAND[0],
        name="p50–p95",
        mode="lines",
        fill="tonexty",
        line={"width": 0.5, "color": band},
        fillcolor=rgba(band, 0.25),
    )


def _add_reward_markers(fig: LiveFigure) -> None:
    """The reward panel's fitted-ceiling line and skipped-update markers, hidden until there is data."""
    fig.add_scatter(
        x=[],
        y=[],
        meta="fit_ceiling",
        name="ceiling b − a (fit)",
        mode="lines",
        line={"color": QUANTITY["threshold"], "dash": "longdash", "width": 1.5},
        visible=False,
    )
    fig.add_scatter(
        x=[],
        y=[],
        meta="skipped_update",
        name="update skipped (NaN/inf loss)",
        mode="markers",
        marker={"symbol": "x", "size": 11, "color": STATES["error"]},
        visible=False,
    )


def method_figure(group: str, metrics: Iterable[str]) -> LiveFigure:
    """The panel of a method group: each of its metrics in the group's unit, a line each."""
    fig = LiveFigure()
    fig.update_layout(**panel_layout(GROUPS[group].title))
    fig.update_xaxes(title_text="step", rangemode="tozero")
    fig.update_yaxes(title_text=GROUPS[group].unit, exponentformat="e")
    for i, metric in enumerate(metrics):
        _add_series(fig, (metric, registry.get(metric).label, series_color(i), "solid", False))
    return fig


def _add_series(fig: LiveFigure, spec) -> None:
    column, label, color, dash, secondary = spec
    trace = {
        "x": [],
        "y": [],
        "meta": str(column),
        "name": label,
        "mode": "lines",
        "line": {"color": color, "dash": dash, "width": 2},
    }
    if secondary:
        fig.add_scatter(**trace, secondary_y=True)
    else:
        fig.add_scatter(**trace)


def _small(text: str) -> str:
    return f"<div style='font-size:{FONT_SIZE - 1}px;color:#333'>{text}</div>"
