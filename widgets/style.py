"""One look for every widget and notebook: a colour language and a projector-readable layout.

The colour language (shown once in the README), all from the colour-blind-safe Okabe-Ito set:

- **Per-token values**: entropy and other unsigned values on viridis (dark = certain, yellow =
  uncertain, 0 at the dark end); signed values (advantages, bonuses, log-prob changes) on a
  diverging blue-white-orange map centred on zero; ERPO's gate weight on white -> bluish green
  (0 = no gradient, 1 = full). Pivots are outlined in vermillion.
- **Quantities** in figures: reward and accuracy blue, entropy bluish green, KL reddish purple,
  diversity (strategies, answers) orange; a threshold or fitted limit is a dashed vermillion line.
- **Gate**: open bluish green, shut grey.
- **Modes and stages**: Policy Split's normal mode and EEPO's stage 1 blue, the high-entropy
  mode and stage 2 (after unlearning) orange.
- **Runs** (methods, branches, sweep points): ``run_color(i)`` in the order the runs are listed,
  the same in ``RunComparison`` and in any notebook figure of the same runs.
- **States** of a widget: running blue, paused orange, error vermillion, idle grey; of a sweep's
  trials: running blue, finished bluish green, stopped early grey, failed vermillion, pending sky.
"""

from __future__ import annotations

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
BLUE, ORANGE, GREEN, VERMILLION, PURPLE, SKY, YELLOW, BLACK = OKABE_ITO
GREY = "#777777"

SEQUENTIAL = "Viridis"
DIVERGING = [[0.0, "#2166AC"], [0.5, "#F7F7F7"], [1.0, "#B35806"]]
GATE_SCALE = [[0.0, "#FFFFFF"], [1.0, GREEN]]
PIVOT_OUTLINE = VERMILLION

QUANTITY = {
    "reward": BLUE,
    "accuracy": BLUE,
    "entropy": GREEN,
    "kl": PURPLE,
    "clip": SKY,
    "diversity": ORANGE,
    "threshold": VERMILLION,
}
GATE = {"open": GREEN, "shut": GREY}
MODES = {"normal": BLUE, "high_entropy": ORANGE}
STAGES = {1: BLUE, 2: ORANGE}
STATES = {"idle": GREY, "running": BLUE, "paused": ORANGE, "stopped": GREY, "error": VERMILLION}
TRIAL_STATES = {
    "pending": SKY,
    "running": BLUE,
    "finished": GREEN,
    "stopped": GREY,
    "failed": VERMILLION,
    "interrupted": ORANGE,
}
RUNS = (BLUE, ORANGE, GREEN, PURPLE, SKY, VERMILLION, YELLOW, BLACK)
FONT_SIZE = 14

# what each per-token value is, its unit and its colour scale ("signed": the diverging map)
TOKEN_VALUES = {
    "entropy": ("token entropy", "nats", False),
    "logprob": ("log-probability", "nats", True),
    "token_advantage": ("token advantage", "", True),
    "gate": ("ERPO gate weight", "", False),
    "he_bonus": ("Policy Split bonus", "", True),
    "kl": ("KL to the reference (k3)", "nats", False),
}


def run_color(index: int) -> str:
    """The colour of the ``index``-th run of a comparison (methods, branches, sweep points)."""
    return RUNS[index % len(RUNS)]


def series_color(index: int) -> str:
    """The ``index``-th Okabe-Ito colour, for series that are neither a quantity nor a run."""
    return OKABE_ITO[index % len(OKABE_ITO)]


def rgba(color: str, alpha: float) -> str:
    """``#RRGGBB`` as a CSS rgba() with ``alpha`` (bands, fills)."""
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def figure_layout(title: str = "", height: int = 300, **axes) -> dict:
    """A plotly layout dict: large fonts, light grid, legend on top, margins that fit a notebook."""
    layout = {
        "title": {"text": title, "font": {"size": FONT_SIZE + 2}},
        "height": height,
        "margin": {"l": 60, "r": 20, "t": 50 if title else 20, "b": 50},
        "font": {"size": FONT_SIZE},
        "template": "plotly_white",
        "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0, "font": {"size": FONT_SIZE - 2}},
        "hovermode": "x unified",
    }
    layout.update(axes)
    return layout


# a figure's height; its width is its output area's (live_figure.js), two side by side where they fit
PANEL_HEIGHT = 330


def panel_layout(title: str, height: int = PANEL_HEIGHT, right_axis: bool = False, **axes) -> dict:
    """``figure_layout`` for a panel: the title sits above a legend of up to two rows (they never
    overlap), and a right axis gets room for its tick labels. No width: a ``LiveFigure`` takes its
    output area's and follows it."""
    layout = figure_layout(title, height, **axes)
    layout["title"] = {**layout["title"], "x": 0.01, "xanchor": "left", "y": 0.98, "yanchor": "top"}
    layout["margin"] = {**layout["margin"], "t": 80 if title else 50, "r": 75 if right_axis else 20}
    return layout
