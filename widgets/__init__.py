"""The UI layer: ipywidgets + plotly dashboards that draw what a ``workbench.Trainer`` recorded.

It imports ``workbench``; the engine never imports it. The dashboards themselves are
tracked in their own issue; until they land, notebooks draw with plotly directly.
"""
