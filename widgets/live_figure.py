"""LiveFigure: plotly's ``FigureWidget`` that does not make anywidget time out in a busy browser.

Stock ``FigureWidget`` sends plotly's widget module (plotly.js whole, about 5 MB) as each figure's
``_esm``, and the browser evaluates it once per figure while anywidget waits at most 2 s for the
model to initialize. On a 2-core laptop that is training, or when a page reload restores every
figure at once, that takes longer: the console shows ``[anywidget] Failed to initialize model.``
and that figure silently drops every later update from Python. Here ``_esm`` is the small
``live_figure.js``, which returns at once and evaluates plotly's module once per page, outside
anywidget's wait. The module travels as a message the page asks one figure for, not in any
figure's state: a reload restores every model's state from the kernel at once, and six states
of 5 MB each were not restored at all ("widget model not found"), where small ones were.
The Python API is plotly's.
"""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go

_PLOTLY_MODULE = str(go.FigureWidget._esm)  # the text of plotly's widgetbundle.js


class LiveFigure(go.FigureWidget):
    _esm = Path(__file__).with_name("live_figure.js")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.on_msg(self._send_plotly_module)

    def _send_plotly_module(self, _widget, content, _buffers) -> None:
        if isinstance(content, dict) and content.get("type") == "plotly-module?":
            self.send({"type": "plotly-module", "code": _PLOTLY_MODULE})
