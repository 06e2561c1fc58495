"""A Jupyter server extension that serves plotly.js to the page, for ``live_figure.LiveFigure``.

A figure's page side must not wait for the kernel (it is busy while a cell trains) nor carry
plotly.js in its model state (5 MB a figure was lost on reloads), so the server serves the copy
that the installed plotly package ships, at ``{base_url}workbench/static/plotly.min.js``, like
JupyterLab's own static files. Installing the package enables it
(``etc/jupyter/jupyter_server_config.d/exploration_workbench.json``); ``jupyter server extension
list`` shows it. This module imports neither plotly nor the workbench: the server stays light.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_PLOTLY = importlib.util.find_spec("plotly")
assert _PLOTLY is not None and _PLOTLY.origin is not None, "plotly is a dependency of the widgets"
PLOTLY_JS = Path(_PLOTLY.origin).parent / "package_data" / "plotly.min.js"
URL_PATH = "workbench/static/plotly.min.js"  # below the server's base URL; live_figure.js asks for it


def _jupyter_server_extension_points() -> list[dict]:
    return [{"module": "widgets.server_extension"}]


def _load_jupyter_server_extension(serverapp) -> None:
    from jupyter_server.base.handlers import FileFindHandler
    from jupyter_server.utils import url_path_join

    base_url = serverapp.web_app.settings["base_url"]
    folder, name = URL_PATH.rsplit("/", 1)
    pattern = url_path_join(base_url, folder, f"({name.replace('.', '[.]')})")
    serverapp.web_app.add_handlers(".*$", [(pattern, FileFindHandler, {"path": [str(PLOTLY_JS.parent)]})])
    serverapp.log.info("exploration workbench: serving plotly.js at %s", url_path_join(base_url, URL_PATH))
