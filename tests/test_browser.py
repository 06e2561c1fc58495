"""The dashboard, the token view and the EEPO stepper in a real browser: JupyterLab on 127.0.0.1 with a token,
driven by headless Debian Chromium through Playwright. Saves the screenshots under docs/img/.

Skips (one line) when Chromium or Playwright is missing; with CI=true it fails instead, so CI
can never pass without having rendered the widgets."""

import importlib.util
import json
import os
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
CELLS = [
    "from workbench import RunConfig, Trainer\n"
    "from widgets import TokenView, TrainingDashboard\n\n"
    "trainer = Trainer(RunConfig(num_prompts=2, num_generations=4, max_completion_length=16))\n"
    "dash = TrainingDashboard(trainer, steps=3)\n"
    "dash",
    "for _ in range(3):\n"
    "    dash.step()\n"
    "dash.redraw()",
    "view = TokenView(trainer)\n"
    "view",
    "from widgets import EEPOStepper\n\n"
    "eepo = Trainer(RunConfig(num_prompts=2, num_generations=8, max_completion_length=16, method='eepo',\n"
    "                         method_options={'gate': 'always'}))\n"
    "stepper = EEPOStepper(eepo)\n"
    "for _ in range(4):  # sample_stage1, unlearn, sample_stage2, score\n"
    "    stepper.next_phase()\n"
    "stepper",
    f"print({DONE!r})",
]
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
def lab(tmp_path, browser_ready):
    """A JupyterLab server on a free port of 127.0.0.1, token-protected, serving a test notebook."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
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


@pytest.mark.slow
def test_widgets_render_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright

    outside = []  # requests that would leave the machine: a workshop is offline
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.on("request", lambda r: None if r.url.startswith(("http://127.0.0.1", "data:", "blob:"))
                    else outside.append(r.url))
            page.goto(lab, wait_until="domcontentloaded", timeout=120_000)
            page.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=120_000)
            page.wait_for_function("window.jupyterapp.shell.currentWidget?.sessionContext?.session?.kernel",
                                   timeout=120_000)
            page.evaluate("window.jupyterapp.shell.collapseLeft()")
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            # the kernel aborts the queued cells after an error, so the marker means all ran cleanly
            page.get_by_text(DONE, exact=True).last.wait_for(timeout=300_000)

            dashboard = page.locator(".wb-dashboard")
            dashboard.locator(".js-plotly-plot").nth(3).wait_for(timeout=60_000)
            page.locator(".wb-token").first.wait_for(timeout=60_000)
            # each figure holds its traces, and the reward curve has the three steps run
            page.wait_for_function(
                "Array.from(document.querySelectorAll('.wb-dashboard .js-plotly-plot'))"
                ".every(d => (d.data || []).length > 0)"
                " && (document.querySelector('.wb-dashboard .js-plotly-plot').data || [])"
                ".some(t => t.meta === 'reward_mean' && t.x.length === 3)", timeout=60_000)
            traces = page.evaluate("Array.from(document.querySelectorAll('.wb-dashboard .js-plotly-plot'))"
                                   ".map(d => d.querySelectorAll('.scatterlayer .trace').length)")
            assert len(traces) == 4 and all(n > 0 for n in traces), traces
            tokens = page.locator(".wb-token-view .wb-token").count()
            assert tokens > 0
            stepper = page.locator(".wb-eepo-stepper")
            assert stepper.locator(".wb-token").count() > 0
            assert all(n > 0 for n in page.evaluate(
                "Array.from(document.querySelectorAll('.wb-eepo-stepper .js-plotly-plot'))"
                ".map(d => d.querySelectorAll('.trace').length)"))

            IMAGES.mkdir(parents=True, exist_ok=True)
            for widget, name in ((dashboard, "dashboard"), (page.locator(".wb-token-view"), "token-view"),
                                 (stepper, "eepo-stepper")):
                # the notebook scrolls inside the page: make the page tall enough to show all of the widget
                height = int(widget.bounding_box()["height"])
                page.set_viewport_size({"width": 1500, "height": max(1000, height + 250)})
                widget.scroll_into_view_if_needed()
                page.wait_for_timeout(500)  # let plotly finish relayouts
                widget.screenshot(path=str(IMAGES / f"{name}.png"))
        finally:
            browser.close()
    assert not outside, f"the page loaded from outside 127.0.0.1: {outside[:5]}"
