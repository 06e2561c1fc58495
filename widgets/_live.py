"""Helpers shared by the panels: throttled redraws, status lines, escaping, downsampling, units."""

from __future__ import annotations

import html
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import ipywidgets as w
import pandas as pd

from .style import FONT_SIZE, OKABE_ITO

T = TypeVar("T")

ERROR_COLOR = OKABE_ITO[3]
OK_COLOR = OKABE_ITO[2]


class Throttle:
    """Run ``draw`` at most once per ``interval`` seconds.

    A call inside the interval is deferred to its end on a timer, so the latest state is
    always drawn and a fast run never waits on its plots. ``interval=0`` draws every call
    at once (what tests use)."""

    def __init__(self, draw: Callable[[], None], interval: float):
        self._draw, self.interval = draw, interval
        self._lock = threading.Lock()  # guards the schedule
        self._drawing = threading.Lock()  # one draw at a time (trainer thread vs timer thread)
        self._last = -math.inf
        self._timer: threading.Timer | None = None

    def __call__(self) -> None:
        with self._lock:
            wait = self._last + self.interval - time.monotonic()
            if wait > 0:
                if self._timer is None:
                    self._timer = threading.Timer(wait, self._fire)
                    self._timer.daemon = True
                    self._timer.start()
                return
            self._last = time.monotonic()
        self._run()

    def _fire(self) -> None:
        with self._lock:
            self._timer = None
            self._last = time.monotonic()
        self._run()

    def _run(self) -> None:
        with self._drawing:
            self._draw()

    def flush(self) -> None:
        """Draw now, replacing a deferred draw."""
        self.cancel()
        with self._lock:
            self._last = time.monotonic()
        self._run()

    def cancel(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None


# two figures side by side need twice this width; a narrower output area shows them one per line
FIGURE_MIN_WIDTH = 400


def figure_row(*widgets: w.DOMWidget, min_width: int = FIGURE_MIN_WIDTH) -> w.Box:
    """Figures (or other widgets) side by side in the output area's width, shared equally, one per
    line where two would be narrower than ``min_width`` each."""
    cells = [w.Box([x], layout=w.Layout(flex=f"1 1 {min_width}px", min_width="0")) for x in widgets]
    return w.Box(cells, layout=w.Layout(display="flex", flex_flow="row wrap", width="100%", grid_gap="8px"))


def step_ticks(steps: Sequence[int]) -> dict:
    """x-axis ticks for steps: every step while there are few (no 0.5 steps), else automatic."""
    return {"dtick": 1, "tick0": 0} if len(steps) and max(steps) - min(steps) <= 10 else {"dtick": None}


def status_line() -> w.HTML:
    return w.HTML(value="", layout=w.Layout(min_height="1.6em"))


def set_status(line: w.HTML, message: str, error: bool = False) -> None:
    """Show ``message`` (plain text, escaped here) in a status line; errors in vermillion."""
    color = ERROR_COLOR if error else "inherit"
    line.value = f'<span style="font-size:{FONT_SIZE}px;color:{color}">{html.escape(message)}</span>'


def esc(text: object) -> str:
    """Model output and labels are untrusted: escaped before plotly or an HTML widget sees them."""
    return html.escape("" if text is None else str(text))


def downsample(xs: Sequence, ys: Sequence, max_points: int) -> tuple[list, list]:
    """Every k-th point (the last always kept), so a long run draws at most ~``max_points``."""
    n = len(xs)
    if n <= max_points:
        return list(xs), list(ys)
    stride = math.ceil(n / max_points)
    keep = list(range(0, n, stride))
    if keep[-1] != n - 1:
        keep.append(n - 1)
    return [xs[i] for i in keep], [ys[i] for i in keep]


def numeric_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """The numeric columns of metrics rows: metrics.jsonl stores NaN as null and infinities as
    "inf" strings."""
    out = frame.apply(pd.to_numeric, errors="coerce")
    return out.loc[:, out.notna().any() | frame.isna().all()]


def prompt_labels(prompts: Sequence[str], width: int = 60) -> list[str]:
    """One line of at most ``width`` characters per prompt that tells them apart: what all of them
    share at the start and at the end (an instruction, a format line) is cut to "…"."""
    lines = [" ".join(p.split()) for p in prompts]
    if len(lines) > 1:
        start = len(os.path.commonprefix(lines))
        end = len(os.path.commonprefix([line[::-1] for line in lines]))
        start = start if start > 12 else 0  # a shared first word or two is worth keeping
        end = end if end > 12 else 0
        if all(start + end < len(line) for line in lines):
            lines = [
                ("…" if start else "") + line[start : len(line) - end].strip() + ("…" if end else "") for line in lines
            ]
    return [line if len(line) <= width else line[: width - 1] + "…" for line in lines]


def update_prompt_selector(dropdown: w.Dropdown, batch) -> None:
    """A batch's prompts as the options (one line of plain text each, told apart by what differs);
    the selected prompt index stays selected across steps."""
    options = (
        []
        if batch is None
        else [(f"{g}: {label}", g) for g, label in enumerate(prompt_labels([p.prompt for p in batch.problems]))]
    )
    keep = dropdown.value
    if options != list(dropdown.options):
        dropdown.options = options
    if options:
        dropdown.value = keep if keep is not None and keep < len(options) else 0


SPINNER_CSS = (
    "@keyframes wb-spin { to { transform: rotate(360deg); } } .wb-spinner { display:inline-block; "
    "width:0.75em; height:0.75em; margin-right:5px; border:2px solid #bbb; border-top-color:#0072B2; "
    "border-radius:50%; animation:wb-spin 0.9s linear infinite; vertical-align:-1px; }"
)


def busy(html_text: str) -> str:
    """``html_text`` after a spinning mark: the widget is working and its buttons wait."""
    return f"<style>{SPINNER_CSS}</style><span class='wb-spinner'></span>{html_text}"


class Every:
    """Call ``fn`` every ``interval`` seconds on a daemon thread until ``cancel()``."""

    def __init__(self, interval: float, fn: Callable[[], None], name: str):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(interval, fn), daemon=True, name=name)
        self._thread.start()

    def _loop(self, interval: float, fn: Callable[[], None]) -> None:
        while not self._stop.wait(interval):
            fn()

    def cancel(self) -> None:
        self._stop.set()


class PollGuard:
    """One poll at a time (the timer's, direct ones, reloads), its error kept for the status line.

    ``run(work)`` runs ``work()`` under the lock, records its exception in ``error`` (None when it
    went through), redraws with ``show()`` either way and re-raises; ``tick(poll)`` is the timer's
    call of a widget's guarded ``poll``: it swallows the error that ``show`` has already put on
    screen, so that the next poll tries again."""

    def __init__(self, show: Callable[[], None]):
        self.lock = threading.Lock()
        self.error: Exception | None = None
        self._show = show

    def run(self, work: Callable[[], T]) -> T:
        with self.lock:
            try:
                result = work()
                self.error = None
                return result
            except Exception as error:
                self.error = error
                raise
            finally:
                self._show()

    @staticmethod
    def tick(poll: Callable[[], object]) -> None:
        try:
            poll()
        except Exception:  # shown in the status line by run(); the next poll tries again
            pass


class Polled:
    """What a widget that follows files on a timer shares: ``_tick``, the timer's call of its
    ``poll()``, and ``error``, the last poll's (None when it went through). The widget sets
    ``self._guard`` (a PollGuard) and defines ``poll``."""

    _guard: PollGuard
    poll: Callable[[], object]  # the widget's own (declared, not defined: the widget's class defines it)

    def _tick(self) -> None:
        self._guard.tick(self.poll)

    @property
    def error(self) -> Exception | None:
        """The last poll's error, None when it went through."""
        return self._guard.error
