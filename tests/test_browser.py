"""The widgets in a real browser: JupyterLab on 127.0.0.1 with a token, driven by headless Debian
Chromium through Playwright, at a 1,366 x 768 laptop's size. The test clicks as a participant
would: Start, Pause, Start again, Step, Step phase and Stop on the dashboard; Next phase through
a whole EEPO step; a live change made in code that the hyperparameter panel must show. Any error
in the browser console fails it, also after reloading the page while the kernel's widgets live.
A second test reloads a saved notebook of six figures in a half-speed browser: the workbench's
figures come back and take updates, where plotly's stock FigureWidget fails (issue 19, item 9).
Saves the screenshots under docs/img/.

Skips (one line) when Chromium or Playwright is missing; with CI=true it fails instead, so CI
can never pass without having rendered the widgets."""

import importlib.util
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
IMAGES = ROOT / "docs" / "img"
DONE = "WB-NOTEBOOK-DONE"
SMALL = "num_prompts=2, num_generations=4, max_completion_length=16"
CELLS = [
    "from workbench import RunConfig, Trainer\n"
    "from widgets import TokenView, TrainingDashboard\n\n"
    f"trainer = Trainer(RunConfig({SMALL}))\n"
    "dash = TrainingDashboard(trainer, steps=200)\n"
    "dash",
    "dash.step()\n"
    "view = TokenView(trainer)\n"
    "view",
    "from widgets import EEPOStepper\n\n"
    f"eepo = Trainer(RunConfig({SMALL.replace('4', '8', 1)}, method='eepo', method_options={{'gate': 'always'}}))\n"
    "stepper = EEPOStepper(eepo)\n"
    "stepper",
    "from widgets import HyperparameterPanel\n\n"
    "panel = HyperparameterPanel(trainer)\n"
    "panel",
    f"print({DONE!r})",
]
VIEWPORT = {"width": 1366, "height": 768}  # the laptop the compact layouts are for
# JupyterLab settings for a quiet, deterministic page: no news or update checks (nothing
# leaves 127.0.0.1) and every cell kept in the DOM (no windowing), so all outputs render.
SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


def require(ok: bool, reason: str) -> None:
    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: CI=true needs the browser test (make test installs Debian's chromium)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def browser_ready():
    require(shutil.which(CHROMIUM) is not None, f"no browser: {CHROMIUM} is missing")
    require(importlib.util.find_spec("playwright") is not None, "no browser driver: the playwright package is missing")


@pytest.fixture
def cells():
    """The test notebook's cells (a test parametrizes ``cells`` for its own notebook)."""
    return CELLS


@pytest.fixture
def lab(tmp_path, browser_ready, cells):
    """A JupyterLab server on a free port of 127.0.0.1, token-protected, serving a test notebook."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "widgets.ipynb")
    settings = tmp_path / "settings"
    for name, values in SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    token, port = secrets.token_hex(16), free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"), "PYTHONPATH": str(ROOT)}
    command = [str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--port={port}", f"--ServerApp.token={token}", f"--ServerApp.root_dir={tmp_path}",
               "--LabApp.expose_app_in_browser=True"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    log = open(tmp_path / "lab.log", "w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start:\n{(tmp_path / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield f"{base}/lab/tree/widgets.ipynb?token={token}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture
def lab_page(lab):
    """A Chromium page on the opened notebook, with every console error collected in
    ``page.errors`` (and no request that leaves 127.0.0.1: a workshop is offline)."""
    from playwright.sync_api import sync_playwright

    outside = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.errors = []
            page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: page.errors.append(str(e)))
            page.on("request", lambda r: None if r.url.startswith(("http://127.0.0.1", "data:", "blob:"))
                    else outside.append(r.url))
            open_lab(page, lab)
            yield page
        finally:
            browser.close()
    assert not outside, f"the page loaded from outside 127.0.0.1: {outside[:5]}"


@pytest.fixture
def page(lab_page):
    """The notebook's page after Run All."""
    run_all(lab_page)
    return lab_page


def open_lab(page, url: str) -> None:
    page.goto(url, wait_until="domcontentloaded", timeout=120_000)
    page.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=120_000)
    page.wait_for_function("window.jupyterapp.shell.currentWidget?.sessionContext?.session?.kernel",
                           timeout=120_000)
    page.evaluate("window.jupyterapp.shell.collapseLeft()")


def run_all(page) -> None:
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    # the kernel aborts the queued cells after an error, so the marker means all ran cleanly
    page.get_by_text(DONE, exact=True).last.wait_for(timeout=300_000)


def run_in_kernel(page, code: str) -> None:
    """Run ``code`` in the notebook's kernel as another cell would (the notebook is not changed)."""
    page.evaluate("code => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel"
                  ".requestExecute({code}).done", code)


def status_step(widget) -> int:
    return int(re.search(r"\bstep (\d+)", widget.locator(".widget-html").first.inner_text()).group(1))


def wait_for_status(widget, pattern: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = widget.locator(".widget-html").first.inner_text()
        if re.search(pattern, text):
            return text
        time.sleep(0.2)
    raise AssertionError(f"the status never matched {pattern!r}; it reads: {text!r}")


def shoot(page, widget, name: str, folder: Path = IMAGES) -> None:
    widget.scroll_into_view_if_needed()
    page.wait_for_timeout(700)  # let plotly finish relayouts
    box = widget.bounding_box()
    # the main view fits the laptop's screen (details are a tab away)
    assert box["width"] <= VIEWPORT["width"] and box["height"] <= VIEWPORT["height"] - 100, (name, box)
    folder.mkdir(parents=True, exist_ok=True)
    widget.screenshot(path=str(folder / f"{name}.png"))


@pytest.mark.slow
def test_a_participant_clicks_through_the_widgets(page, tmp_path):
    from playwright.sync_api import expect

    dash = page.locator(".wb-dashboard")
    button = {name: dash.locator("button", has_text=name).first for name in ("Start", "Pause", "Stop")}
    button["Step"] = dash.locator("button", has_text=re.compile(r"^\s*Step\s*$"))
    button["Step phase"] = dash.locator("button", has_text="Step phase")
    page.wait_for_function("Array.from(document.querySelectorAll('.wb-dashboard .js-plotly-plot'))"
                           ".some(d => (d.data || []).some(t => t.meta === 'reward_mean' && t.x.length === 1))",
                           timeout=120_000)

    # Start, Pause: the buttons come back (item 1), Start again: training resumes
    for round_ in range(2):
        before = status_step(dash)
        button["Start"].click()
        wait_for_status(dash, r"running")
        expect(button["Pause"]).to_be_enabled()
        wait_for_status(dash, rf"\bstep (?!{before}\b)\d+")  # a step finished
        button["Pause"].click()
        wait_for_status(dash, r"^paused")
        for name in ("Start", "Step", "Step phase"):
            expect(button[name]).to_be_enabled(timeout=10_000)
        expect(button["Pause"]).to_be_disabled()
        assert status_step(dash) > before, f"round {round_}: training did not resume"
    before = status_step(dash)
    button["Step"].click()
    wait_for_status(dash, rf"^idle · step {before + 1}\b")
    expect(button["Start"]).to_be_enabled(timeout=10_000)
    button["Step phase"].click()
    wait_for_status(dash, r"unfinished step, last phase sample")
    expect(button["Stop"]).to_be_enabled(timeout=10_000)
    button["Stop"].click()
    wait_for_status(dash, rf"^stopped · step {before + 1}\b")
    steps = before + 1
    page.wait_for_function("n => Array.from(document.querySelectorAll('.wb-dashboard .js-plotly-plot'))"
                           ".some(d => (d.data || []).some(t => t.meta === 'reward_mean' && t.x.length === n))",
                           arg=steps, timeout=60_000)
    shoot(page, dash, "dashboard")
    page.locator(".wb-token-view .wb-token").first.wait_for(timeout=60_000)
    shoot(page, page.locator(".wb-token-view"), "token-view")

    # the EEPO stepper through a whole step; a double click runs one phase, not two (item 5)
    stepper = page.locator(".wb-eepo-stepper")
    next_phase = stepper.locator("button", has_text="Next phase")
    timeline = stepper.locator(".wb-timeline")
    next_phase.dblclick()
    expect(timeline).to_contain_text("✔ sample_stage1", timeout=120_000)
    expect(next_phase).to_be_enabled(timeout=10_000)
    expect(timeline).to_contain_text("▶ unlearn (next)")
    for name in ("unlearn", "sample_stage2", "score", "advantage", "update", "metrics"):
        next_phase.click()
        expect(timeline).to_contain_text(f"✔ {name}", timeout=120_000)
        expect(next_phase).to_be_enabled(timeout=10_000)
        if name == "unlearn":
            expect(stepper.locator(".js-plotly-plot .bars .point").first).to_be_visible(timeout=30_000)
            shoot(page, stepper, "eepo-stepper-gate", tmp_path)  # for a person to look at
    expect(timeline).to_contain_text("step done")
    assert stepper.locator(".wb-token").count() > 0
    stepper.get_by_role("tab", name="rollouts").click()
    shoot(page, stepper, "eepo-stepper")

    # a live change made in code shows in the panel (item 4)
    panel = page.locator(".wb-hyperparameter-panel")
    temperature = panel.locator(".widget-inline-hbox", has=page.locator("label", has_text=re.compile(
        r"^temperature$"))).locator("input").first
    expect(temperature).to_have_value("1")
    run_in_kernel(page, "trainer.set_live(temperature=1.3)")
    expect(temperature).to_have_value("1.3", timeout=10_000)
    panel.locator(".widget-gridbox").first.screenshot(path=str(tmp_path / "panel-live-fields.png"))  # to look at

    # A reload while the kernel's figures live restores every widget model at once (item 9):
    # anywidget gives each model 2 s to load its module, and stock plotly's (5 MB, once per figure)
    # takes longer on a busy 2-core machine.
    page.reload()
    page.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=120_000)
    page.wait_for_timeout(12_000)
    assert not page.errors, f"browser console errors: {page.errors[:5]}"


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


# Item 9: a reload restores every figure model at once, from the kernel. Stock FigureWidget's
# state carries plotly's 5 MB module (its _esm), and six such states are not restored ("widget
# model not found": none draws or takes an update); LiveFigure's module travels as a message.
# In a slow browser stock figures also miss anywidget's 2 s wait while the module evaluates. A cell that shows figures one by
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
