"""Run All of one notebook in JupyterLab in headless Chromium, as a participant would; time it and
screenshot its outputs.

    python bench/notebook_run.py notebooks/08_real_model.ipynb --shots docs/img/notebook-08

JupyterLab serves a copy of the notebook on 127.0.0.1 with a token; Debian's chromium (driven by
Playwright, no browser download) presses Run All and waits until every code cell has an
execution count and the kernel is idle. Prints the wall time of Run All (from the press to the
last cell done) and writes one PNG per output that holds a widget or a figure:
``{shots}-{cell}.png``. ``--print-outputs`` also prints the text of every output (tables, printed
numbers), to read a run's results without opening it. Fails on any error output.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
QUIET = {  # no news or update checks (nothing leaves 127.0.0.1); every cell stays in the DOM
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": '{"fetchNews": "false", "checkForUpdates": false}',
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": '{"windowingMode": "none"}',
}


def start_lab(folder: Path) -> tuple[subprocess.Popen, str]:
    for name, text in QUIET.items():
        path = folder / "settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JUPYTERLAB_SETTINGS_DIR": str(folder / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(folder / "workspaces")}
    command = [str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--port={port}", f"--ServerApp.token={token}", f"--ServerApp.root_dir={folder}",
               "--LabApp.expose_app_in_browser=True"] + (["--allow-root"] if os.geteuid() == 0 else [])
    server = subprocess.Popen(command, stdout=open(folder / "lab.log", "w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
            return server, f"http://127.0.0.1:{port}/lab/tree/{{name}}?token={token}"
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"JupyterLab did not start:\n{(folder / 'lab.log').read_text()[-2000:]}")
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--shots", help="screenshot prefix, e.g. docs/img/notebook-08 (none if omitted)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds Run All may take")
    parser.add_argument("--width", type=int, default=1366, help="the window; JupyterLab's side bar stays open")
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--print-outputs", action="store_true", help="print the text of every output")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    folder = Path(tempfile.mkdtemp(prefix="notebook-run-"))
    notebook_dir = Path(args.notebook).resolve().parent
    # the notebook runs from a copy, next to the others it may import from
    for path in notebook_dir.glob("*.ipynb"):
        shutil.copy(path, folder / path.name)
    if (notebook_dir / "recorded").is_dir():  # the recorded runs notebook 08 opens
        shutil.copytree(notebook_dir / "recorded", folder / "recorded")
    server, url = start_lab(folder)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(url.format(name=args.notebook.name), wait_until="domcontentloaded", timeout=120_000)
            page.wait_for_function("window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel",
                                   timeout=120_000)
            started = time.monotonic()
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            done = ("(() => { const w = window.jupyterapp.shell.currentWidget;"
                    " const cells = w.content.widgets.filter(c => c.model.type === 'code');"
                    " return w.sessionContext.session.kernel.status === 'idle'"
                    " && cells.every(c => c.model.executionCount !== null); })()")
            page.wait_for_function(done, timeout=args.timeout * 1000, polling=1000)
            seconds = time.monotonic() - started
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").count()
            tracebacks = page.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']").count()
            print(f"{args.notebook.name}: Run All {seconds:.0f} s; error outputs {tracebacks}, stderr outputs {errors}")
            if args.print_outputs:
                outputs = page.locator(".jp-CodeCell .jp-OutputArea")
                for i in range(outputs.count()):
                    print(f"--- output {i}\n{outputs.nth(i).inner_text()[:4000]}")
            if args.shots:
                # live figures load plotly.js after a quiet spell of the page (widgets/live_figure.js): on a
                # quick Run All that comes after the last cell, so wait for every figure to be drawn
                page.wait_for_function(
                    "[...document.querySelectorAll('.wb-live-figure')].filter(f => f.offsetWidth).every(f => f.querySelector('.main-svg'))",
                    timeout=60_000,
                    polling=500,
                )
                page.wait_for_timeout(1500)  # plotly relayouts
                outputs = page.locator(".jp-CodeCell .jp-OutputArea")
                for i in range(outputs.count()):
                    area = outputs.nth(i)
                    if area.locator(".js-plotly-plot, .widget-box, .wb-token").count() == 0:
                        continue
                    height = int(area.bounding_box()["height"])
                    page.set_viewport_size({"width": args.width, "height": max(1000, height + 200)})
                    area.scroll_into_view_if_needed()
                    page.wait_for_timeout(500)
                    path = f"{args.shots}-{i}.png"
                    area.screenshot(path=path)
                    print("wrote", path)
            browser.close()
            if tracebacks:
                raise SystemExit(f"{tracebacks} cells raised")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
