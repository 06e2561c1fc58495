# Issue 19, item 9: a browser test kept out of the suite because it fails on the current code too.
# Append to tests/test_browser.py to run it (it uses that file's fixtures: lab_page, run_all,
# run_in_kernel, DONE). Findings (2026-11-30): a saved notebook of 6 figures, reloaded while the
# kernel lives, restores none of them about half the time ("Error: widget model not found" for
# every figure, about 4 s after the kernel's websocket opens, with no "[anywidget] Failed to
# initialize model." before it) -- with LiveFigure as with stock FigureWidget, at half CPU speed
# (1 pass in 5 runs, the suite's included) and unthrottled (1 of 2 failed). Stock
# FigureWidget failed every run. So the reload failure is not only anywidget's 2 s wait on
# plotly's module: look at how the jupyterlab-manager restores models from the kernel (each
# figure's state carries plotly's 5 MB bundle in _plotly_module / _esm; one shared bundle model
# would cut the restore's transfer 6x).
FIGURES = 6


def figure_cells(figure_class: str) -> list[str]:
    """FIGURES figures of ``figure_class`` shown by one cell and updated at once, before the
    browser can have loaded them (the update must wait for the figure, not be dropped)."""
    module, name = figure_class.rsplit(".", 1)
    return [
        "import plotly.graph_objects as go\n"
        f"from {module} import {name} as Figure\n\n"
        f"figures = [Figure(go.Scatter(y=[0, 0])) for _ in range({FIGURES})]\n"
        "display(*figures)\n"
        "for i, figure in enumerate(figures):\n"
        "    figure.data[0].y = [i, 1]",
        f"print({DONE!r})",
    ]


# Chromium's main thread at 1/THROTTLE of its speed during the reload: with FIGURES figures
# restored at once, stock FigureWidget evaluates plotly's 5 MB module FIGURES times within
# anywidget's 2 s wait, which no machine does at half speed (so the test does not depend on load).
THROTTLE = 2


def plotted_y(page) -> list:
    return page.evaluate("Array.from(document.querySelectorAll('.js-plotly-plot'))"
                         ".map(d => Array.from((d.data || [{}])[0].y || []))")


def wait_for_plots(page, expected: list | None, timeout: float = 180) -> None:
    """Wait until the figures plot ``expected`` (each one's y; None: any data in all FIGURES);
    fail at once on a console error."""
    deadline = time.monotonic() + timeout
    while not page.errors:
        plotted = plotted_y(page)
        if plotted == expected or (expected is None and len(plotted) == FIGURES and all(plotted)):
            return
        assert time.monotonic() < deadline, f"the figures plot {plotted}, not {expected or 'all'}"
        page.wait_for_timeout(250)
    raise AssertionError(f"browser console errors: {sorted({e.splitlines()[0] for e in page.errors})}")


# Item 9: a reload restores every figure model at once, and anywidget gives each 2 s to load its
# module. Stock FigureWidget's module is plotly whole, evaluated once per figure: in a slow
# browser the later figures miss their 2 s ("[anywidget] Failed to initialize model.", then
# "widget model not found") and never draw or take an update. A cell that shows figures one by
# one does not show it: each model is then created after the previous one's evaluation.
# (A restored figure draws the data it was created with: plotly sends later changes as messages,
# which are not part of the saved state. The next update from Python brings it up to date.)
@pytest.mark.slow
@pytest.mark.parametrize("cells", [
    pytest.param(figure_cells("widgets.live_figure.LiveFigure"), id="LiveFigure"),
    pytest.param(figure_cells("plotly.graph_objects.FigureWidget"), id="stock-FigureWidget",
                 marks=pytest.mark.xfail(strict=True, raises=AssertionError,
                                         reason="times out in anywidget's 2 s wait (item 9)")),
])
def test_figures_take_updates_after_a_reload_in_a_slow_browser(lab_page):
    page = lab_page
    run_all(page)
    wait_for_plots(page, [[i, 1] for i in range(FIGURES)])
    # saved, so that the reloaded notebook has the figures' views and restores their models at once
    page.evaluate("window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function("!window.jupyterapp.shell.currentWidget.context.model.dirty")
    page.context.new_cdp_session(page).send("Emulation.setCPUThrottlingRate", {"rate": THROTTLE})
    page.reload(wait_until="domcontentloaded", timeout=120_000)
    wait_for_plots(page, None, timeout=240)
    page.wait_for_function("window.jupyterapp.shell.currentWidget?.sessionContext?.session?.kernel")
    run_in_kernel(page, "for i, figure in enumerate(figures):\n    figure.data[0].y = [i, 2]")
    wait_for_plots(page, [[i, 2] for i in range(FIGURES)])
