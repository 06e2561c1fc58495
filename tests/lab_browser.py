"""JupyterLab in a real browser for the browser tests: a server on 127.0.0.1 with a token, headless
Debian Chromium driven by Playwright at a 1,366 x 768 laptop's size with JupyterLab's default
layout (the file browser open: about 900 px of notebook width), and the helpers the tests share.

A test module defines a ``cells`` fixture (the test notebook's code cells); ``lab`` serves that
notebook, ``lab_page`` opens it (every console error collected in ``page.errors``, no request
allowed outside 127.0.0.1), ``page`` runs it all. Skips (one line) when Chromium or Playwright is
missing; with CI=true it fails instead, so CI can never pass without having rendered the widgets."""

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
VIEWPORT = {"width": 1366, "height": 768}  # the laptop the compact layouts are for
# JupyterLab settings for a quiet, deterministic page: no news or update checks (nothing
# leaves 127.0.0.1) and every cell kept in the DOM (no windowing), so all outputs render.
SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    # a saved notebook keeps its widgets' state, so that it shows them with no kernel
    "@jupyter-widgets/jupyterlab-manager/plugin.jupyterlab-settings": {"saveState": True},
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


def start_run_all(page) -> None:
    """Run All, returning at once (the command's promise settles only when every cell has run)."""
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")


def run_all(page) -> None:
    start_run_all(page)
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


def assert_fits(widget) -> None:
    """Nothing of ``widget`` is cut off: no part of it, and no figure in it, reaches past its output
    area's right edge (JupyterLab hides what does) or scrolls sideways."""
    overflow = widget.evaluate("""el => {
        const area = el.closest('.jp-OutputArea-output') || el.parentElement;
        const right = area.getBoundingClientRect().right + 1;
        const parts = [el, ...el.querySelectorAll('.js-plotly-plot, .widget-box, .widget-html')];
        return parts.filter(p => p.offsetWidth && p.getBoundingClientRect().right > right)
            .map(p => `${p.className.split(' ')[0]}: ${Math.round(p.getBoundingClientRect().right)} > ${right}`)
            .concat(area.scrollWidth > area.clientWidth + 1 ? [`area scrolls: ${area.scrollWidth} > ${area.clientWidth}`] : []);
    }""")
    assert not overflow, f"cut off at {VIEWPORT['width']} px with the side bar open: {overflow[:4]}"


def shoot(page, widget, name: str, folder: Path = IMAGES) -> None:
    widget.scroll_into_view_if_needed()
    page.wait_for_timeout(700)  # let plotly finish relayouts
    assert_fits(widget)
    box = widget.bounding_box()
    # the main view fits the laptop's screen (details are a tab away)
    assert box["height"] <= VIEWPORT["height"] - 100, (name, box)
    folder.mkdir(parents=True, exist_ok=True)
    widget.screenshot(path=str(folder / f"{name}.png"))
