"""LiveFigure: plotly's ``FigureWidget`` that does not make anywidget time out in a busy browser.

Stock ``FigureWidget`` sends plotly's widget module (plotly.js whole, about 5 MB) with every
figure, and the browser evaluates it once per figure while anywidget waits at most 2 s for the
model to initialize. On a 2-core laptop that is training, one evaluation takes longer: the console
shows ``[anywidget] Failed to initialize model.`` and that figure silently drops every later
update from Python. ``live_figure.js`` evaluates the module once per page, outside anywidget's
wait, and replays to it the updates that came in the meantime. The Python API is plotly's.
"""

from __future__ import annotations

import json
from pathlib import Path

import plotly.graph_objects as go


def _esm() -> str:
    """live_figure.js with plotly's own widget module (``FigureWidget._esm``, its text) inside."""
    loader = Path(__file__).with_name("live_figure.js").read_text()
    return loader.replace("__PLOTLY_WIDGET__", json.dumps(str(go.FigureWidget._esm)))


class LiveFigure(go.FigureWidget):
    _esm = _esm()
