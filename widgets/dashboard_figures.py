"""The dashboard's four figures: which history columns each draws, in which colour, and how.

A series is (column, legend name, colour, dash, secondary y). Colours are the quantities of
``style.QUANTITY``: reward blue, entropy green, KL purple, diversity orange."""

from __future__ import annotations

from plotly.subplots import make_subplots

from .live_figure import LiveFigure
from .style import BLACK, GREY, MODES, ORANGE, PURPLE, QUANTITY, STAGES, STATES, panel_layout, rgba

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

