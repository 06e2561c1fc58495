"""The dashboard's four figures: which history columns each draws, in which colour, and how;
and ``DashboardDrawing``, which draws a history into them.

A series is (column, legend name, colour, dash, secondary y). Colours are the quantities of
``style.QUANTITY``: reward blue, entropy green, KL purple, diversity orange."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from plotly.subplots import make_subplots

from workbench.metrics import fit_reward_entropy
from workbench.metrics.entropy import FIT_MIN_POINTS

from .live_figure import LiveFigure
from .style import BLACK, FONT_SIZE, GREY, MODES, ORANGE, PURPLE, QUANTITY, STAGES, STATES, panel_layout, rgba

SERIES = {
    "reward": [
        ("reward_mean", "reward (mean)", QUANTITY["reward"], "solid", False),
        ("parsed_fraction", "parsed (well-formed)", GREY, "dot", False),
    ],
    "entropy": [
        ("entropy_mean", "mean", QUANTITY["entropy"], "solid", False),
    ],
    "kl": [
        ("kl", "KL to reference (nats/token)", QUANTITY["kl"], "solid", False),
        ("clip_fraction", "clip fraction", QUANTITY["clip"], "dash", True),
    ],
    "diversity": [
        ("distinct_strategies", "distinct strategies", ORANGE, "solid", False),
        ("distinct_correct_strategies", "distinct correct strategies", ORANGE, "dot", False),
        ("unique_answers", "unique answers", PURPLE, "solid", False),
    ],
}
# series that appear only for methods (or tasks) that record them
OPTIONAL = {
    "reward": [
        ("accuracy", "accuracy", BLACK, "dot", False),
        ("stage1_accuracy", "accuracy, EEPO stage 1", STAGES[1], "dash", False),
        ("stage2_accuracy", "accuracy, EEPO stage 2", STAGES[2], "dash", False),
        ("normal_accuracy", "accuracy, normal mode", MODES["normal"], "dash", False),
        ("high_entropy_accuracy", "accuracy, high-entropy mode", MODES["high_entropy"], "dash", False),
    ],
}
BAND = ("entropy_p50", "entropy_p95")  # the entropy quantiles the trainer records (metrics.entropy_stats)
TITLES = {
    "reward": ("reward and accuracy", "reward · fraction"),
    "entropy": ("token entropy (mean, p50–p95 band)", "entropy (nats)"),
    "kl": ("KL and clip fraction", "KL (nats/token)"),
    "diversity": ("diversity per group", "count per group"),
}
COLUMNS = ("step", *BAND, *(c for specs in (*SERIES.values(), *OPTIONAL.values()) for c, *_ in specs))
# below this share of the reward's variance explained, the fit is not extrapolated to a ceiling
FIT_MIN_R2 = 0.5
# two panels side by side in a tab fit a 1,366-px laptop screen with JupyterLab's side bar folded
PANEL = {"width": 580, "height": 330}


def figure(name: str) -> LiveFigure:
    """The empty figure ``name`` with its traces (``meta`` = the history column each draws)."""
    title, y_title = TITLES[name]
    secondary = any(spec[4] for spec in SERIES[name])
    fig = LiveFigure(make_subplots(specs=[[{"secondary_y": True}]])) if secondary else LiveFigure()
    fig.update_layout(**panel_layout(title, right_axis=secondary, **PANEL))
    fig.update_xaxes(title_text="step", rangemode="tozero")
    fig.update_yaxes(title_text=y_title, exponentformat="e", secondary_y=False if secondary else None)
    if secondary:
        fig.update_yaxes(title_text="clip fraction", secondary_y=True, showgrid=False, rangemode="nonnegative",
                         tickformat=".1%", tickmode="auto")
    if name == "entropy":
        # the band first, so the mean draws on top: p95 as the upper edge, p50 filled up to it
        band = QUANTITY["entropy"]
        fig.add_scatter(x=[], y=[], meta=BAND[1], name="p95", mode="lines",
                        line={"width": 0.5, "color": band}, showlegend=False, hoverinfo="skip")
        fig.add_scatter(x=[], y=[], meta=BAND[0], name="p50–p95", mode="lines", fill="tonexty",
                        line={"width": 0.5, "color": band}, fillcolor=rgba(band, 0.25))
    if name == "reward":
        fig.add_scatter(x=[], y=[], meta="fit_ceiling", name="ceiling b − a (fit)", mode="lines",
                        line={"color": QUANTITY["threshold"], "dash": "longdash", "width": 1.5}, visible=False)
        fig.add_scatter(x=[], y=[], meta="skipped_update", name="update skipped (NaN/inf loss)", mode="markers",
                        marker={"symbol": "x", "size": 11, "color": STATES["error"]}, visible=False)
    for spec in SERIES[name]:
        add_series(fig, spec)
    return fig


def add_series(fig: LiveFigure, spec) -> None:
    column, label, color, dash, secondary = spec
    trace = {"x": [], "y": [], "meta": column, "name": label, "mode": "lines",
             "line": {"color": color, "dash": dash, "width": 2}}
    if secondary:
        fig.add_scatter(**trace, secondary_y=True)
    else:
        fig.add_scatter(**trace)


class DashboardDrawing:
    """The dashboard's drawing: ``history`` (and ``skipped``) into ``figures``, and the fit of the
    reward on the entropy. A mixin of ``TrainingDashboard``, which holds those attributes and
    ``fit_control`` / ``fit_line``."""

    def trace(self, column: str):
        """The trace that draws a history column (``meta`` holds the column name)."""
        for fig in self.figures.values():
            for trace in fig.data:
                if trace.meta == column:
                    return trace
        raise KeyError(f"column={column!r} has no trace; drawn: "
                       f"{', '.join(t.meta for f in self.figures.values() for t in f.data)}")

    def _draw(self) -> None:
        h = self.history
        x = h.array("step")
        # integer step ticks while there are few steps (plotly would tick 0.5, 1.5, ...)
        dtick = 1 if len(h) and x[-1] - x[0] < 10 else None
        for name, fig in self.figures.items():
            drawn = {t.meta for t in fig.data}
            with fig.batch_update():
                fig.layout.xaxis.dtick = dtick
                for spec in OPTIONAL.get(name, []):
                    if spec[0] in h.present and spec[0] not in drawn:
                        add_series(fig, spec)
                for trace in fig.data:
                    if trace.meta in h.columns:
                        trace.x, trace.y = x, h.array(trace.meta)
        self._draw_skips()
        self._label_reward()
        self._draw_fit(x)

    def _label_reward(self) -> None:
        """With 0/1 rewards (countdown) accuracy is the reward: one line, named for both, instead
        of the accuracy line hiding the reward line under it."""
        h = self.history
        same = "accuracy" in h.present and np.allclose(h.array("accuracy"), h.array("reward_mean"), equal_nan=True)
        with self.figures["reward"].batch_update():
            self.trace("reward_mean").name = "reward = accuracy (0/1 rewards)" if same else "reward (mean)"
            if "accuracy" in h.present:
                self.trace("accuracy").visible = not same

    def _note_skips(self, records: Iterable[Mapping]) -> None:
        for record in records:
            if record.get("skipped"):  # the trainer's flag: this step's update was not applied
                reward = record.get("reward_mean")
                self.skipped.append((int(record["step"]), float("nan") if reward is None else float(reward)))

    def _draw_skips(self) -> None:
        marker = self.trace("skipped_update")
        with self.figures["reward"].batch_update():
            marker.visible = bool(self.skipped)
            marker.x, marker.y = [s for s, _ in self.skipped], [r for _, r in self.skipped]

    def _draw_fit(self, x: np.ndarray) -> None:
        h = self.history
        self.fit = fit_reward_entropy(h.array("entropy_mean"), h.array("reward_mean")) if len(h) else None
        meaningful = self.fit is not None and self.fit["r2"] >= FIT_MIN_R2
        ceiling = self.trace("fit_ceiling")
        show = self.fit_control.value and meaningful
        with self.figures["reward"].batch_update():
            ceiling.visible = show
            if show:
                ceiling.x, ceiling.y = [x[0], x[-1]], [self.fit["ceiling"]] * 2
        self.fit_line.value = _small(self._fit_text()) if self.fit_control.value else ""

    def _fit_text(self) -> str:
        f = self.fit
        if f is None:
            return f"fit R = −a·exp(H) + b: needs {FIT_MIN_POINTS} steps with different entropies"
        if f["r2"] < FIT_MIN_R2:
            return (f"fit R = −a·exp(H) + b over {f['n']} steps: R² = {f['r2']:.2f}, entropy explains too little "
                    f"of the reward yet to predict a ceiling (shown from R² ≥ {FIT_MIN_R2:g})")
        return (f"fit R = −a·exp(H) + b over {f['n']} steps: a = {f['a']:.3g}, b = {f['b']:.3g}, "
                f"R² = {f['r2']:.2f} · predicted ceiling b − a = <b>{f['ceiling']:.3f}</b> (reward at entropy 0)")


def _small(text: str) -> str:
    return f"<div style='font-size:{FONT_SIZE - 1}px;color:#333'>{text}</div>"
