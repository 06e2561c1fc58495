"""LiveFigure: plotly's ``FigureWidget`` whose model state is always the figure as it is now.

Stock ``FigureWidget`` puts the figure into its state once, at creation, and sends every later edit
as a one-off message; its page side is plotly.js whole (5 MB) inside each model's ``_esm``. So a
reload or a second view drew the curves the figure was created with, and the 5 MB module made
anywidget time out on a busy page. Here every edit (plotly calls one of the ``_send_*_msg`` hooks
below, once per ``batch_update``) replaces the state with the whole current figure, and the page
side is the small ``live_figure.js``: it draws the state with ``Plotly.react`` and takes plotly.js
from the Jupyter server (``server_extension``), once per page, with no kernel round trip, so figures
draw while a cell keeps the kernel busy, after a reload, and from a notebook's saved widget state.
Where no server serves it (another front end), the page asks the kernel. The Python API is plotly's.
"""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path

import plotly.graph_objects as go

from .server_extension import PLOTLY_JS


class LiveFigure(go.FigureWidget):
    _esm = Path(__file__).with_name("live_figure.js")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # not counted: a view that counts itself sends a sync message, which a notebook opened
        # from its saved widget state with no kernel cannot send (a console error on every figure)
        self._view_count = None
        self.on_msg(self._send_plotly_js)

    def _publish(self, *_args, **_kwargs) -> None:
        """The figure's current data and layout become the model's state (what every view draws)."""
        self._widget_data = deepcopy(self._data)
        self._widget_layout = deepcopy(self._layout_obj._props)

    # plotly's own hooks for an edit that its Python side has already applied to the figure
    _send_addTraces_msg = _send_deleteTraces_msg = _send_moveTraces_msg = _publish
    _send_restyle_msg = _send_relayout_msg = _send_update_msg = _send_animate_msg = _publish

    def _send_plotly_js(self, _widget, content, _buffers) -> None:
        if isinstance(content, dict) and content.get("type") == "plotly.js?":
            self.send({"type": "plotly.js", "code": PLOTLY_JS.read_text(encoding="utf-8")})
