"""RunWatch: a run directory that another process writes, polled on a timer for what is new.

The reading is the engine's ``workbench.run_follower.RunFollower``, which never takes the run's
lock and never writes into it; this adds the timer, one poll at a time, and the status line a
following widget shows ("following runs/a · step 12 of 50 · waiting for step 13").
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

import ipywidgets as W

from workbench.run_follower import RunFollower, RunUpdate

from ._live import ERROR_COLOR, Every, PollGuard, Polled, busy
from .style import FONT_SIZE

# seconds between polls: a new step shows within a second, and a poll that finds nothing costs
# a few stat() calls
FOLLOW_INTERVAL = 1.0


def is_run_directory(source) -> bool:
    """Whether a widget was handed a run directory (a path) rather than a trainer or a batch."""
    return isinstance(source, (str, Path))


class RunWatch(Polled):
    """Polls ``RunFollower(run_dir, steps)`` every ``interval`` seconds once ``start``-ed and hands
    each ``RunUpdate`` to ``on_update`` (most hold nothing new: ``update.news``, so that a widget
    can also do its own work a poll at a time). ``status`` is its status line;
    ``detail`` (optional) returns HTML the widget adds to it. ``poll()`` polls now (a test, a
    refresh); ``close()`` stops the timer."""

    def __init__(self, run_dir: str | Path, on_update: Callable[[RunUpdate], None], steps: int | None = None,
                 interval: float = FOLLOW_INTERVAL, detail: Callable[[], str] | None = None, name: str = "RunWatch"):
        if not interval > 0:
            raise ValueError(f"interval={interval!r} is not allowed: seconds > 0 between polls")
        self.follower = RunFollower(run_dir, steps)
        self.interval, self.name = interval, name
        self.status = W.HTML(layout=W.Layout(min_height="1.6em"))
        self._on_update, self._detail = on_update, detail
        self._guard = PollGuard(self.show)
        self._timer: Every | None = None

    @property
    def state(self) -> str:
        """The followed run's state: "waiting", "running" or "finished" (``RunFollower.state``)."""
        return self.follower.state

    def start(self) -> None:
        """Poll now, then every ``interval`` seconds until ``close``."""
        self._tick()
        if self._timer is None:
            self._timer = Every(self.interval, self._tick, self.name)

    def poll(self) -> RunUpdate:
        """Read what is new now, hand it on and show the state; an error is raised."""
        return self._guard.run(self._poll)

    def _poll(self) -> RunUpdate:
        update = self.follower.poll()
        self._on_update(update)
        return update

    def show(self) -> None:
        """Redraw the status line."""
        state = self.follower.state
        where = html.escape(self.follower.describe())
        parts = [f"following <code>{html.escape(str(self.follower.dir))}</code>",
                 busy(where) if state == "running" else f"<b>{where}</b>" if state == "finished" else where]
        detail = self._detail() if self._detail is not None else ""
        if detail:
            parts.append(detail)
        if self.error is not None:
            parts.append(f"<span style='color:{ERROR_COLOR}'>{html.escape(type(self.error).__name__)}: "
                         f"{html.escape(str(self.error))} (trying again every {self.interval:g} s)</span>")
        self.status.value = f"<div style='font-size:{FONT_SIZE}px'>{' · '.join(parts)}</div>"

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
