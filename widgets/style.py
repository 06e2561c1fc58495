"""One look for every widget: colour-blind-safe palettes, projector-readable figure layout.

- Categorical series (methods, modes, stages): Okabe-Ito, safe for the common colour-vision
  deficiencies.
- Sequential values (entropy, probability): viridis, perceptually uniform.
- Signed values (advantages, bonuses, log-prob changes): a diverging blue-white-orange map
  centred on zero.
"""

from __future__ import annotations

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
SEQUENTIAL = "Viridis"
DIVERGING = [[0.0, "#2166AC"], [0.5, "#F7F7F7"], [1.0, "#B35806"]]
PIVOT_OUTLINE = "#D55E00"
FONT_SIZE = 14

# what each per-token value is, its unit and whether it is signed (diverging map) or not
TOKEN_VALUES = {
    "entropy": ("token entropy", "nats", False),
    "logprob": ("log-probability", "nats", True),
    "token_advantage": ("token advantage", "", True),
    "gate": ("ERPO gate weight", "", False),
    "he_bonus": ("Policy Split bonus", "", True),
}


def series_color(index: int) -> str:
    return OKABE_ITO[index % len(OKABE_ITO)]


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


def panel_layout(title: str, height: int = 340, width: int = 620, right_axis: bool = False, **axes) -> dict:
    """``figure_layout`` for a fixed-size panel: the title sits above a legend of up to two rows
    (they never overlap), and a right axis gets room for its tick labels. A fixed width because
    a widget rendered before it is attached has no container width to autosize to."""
    layout = figure_layout(title, height, **axes)
    layout["width"] = width
    layout["title"] = {**layout["title"], "x": 0.01, "xanchor": "left", "y": 0.98, "yanchor": "top"}
    layout["margin"] = {**layout["margin"], "t": 80 if title else 50, "r": 75 if right_axis else 20}
    return layout
