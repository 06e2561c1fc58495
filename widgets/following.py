"""Feed: a widget's run source, polled when there may be news, with the status line it shows.

The source is the engine's (``workbench.run.source.open_run``): a trainer in this process
(``LiveRun``, news after each phase it announces) or a run directory another process writes
(``RunFollower``, which never locks or writes it, looked at every ``interval`` seconds). This adds
one poll at a time, each ``RunUpdate`` handed to the widget, and the status line ("following
runs/a · step 12 of 50 · waiting for step 13").
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable

import ipywidgets as W

from workbench.run.follower import RunUpdate
from workbench.run.source import LiveRun, RunSource, open_run

from ._live import ERROR_COLOR, Polled, PollGuard, busy
from .style import FONT_SIZE

# seconds between polls of a run directory: a new step shows within a second, and a poll that
# finds nothing costs a few stat() calls
FOLLOW_INTERVAL = 1.0


class Feed(Polled):
    """Polls ``open_run(source, steps)`` once ``start``-ed, whenever it may have news, and hands each
    ``RunUpdate`` to ``on_update`` (most hold nothing new: ``update.news``, so that a widget can
    also do its own work a poll at a time). ``status`` is its status line; ``detail`` (optional)
    returns HTML parts the widget adds to it. ``poll()`` polls now; ``close()`` stops polling and
    closes the source."""

    def __init__(
        self,
        source,
        on_update: Callable[[RunUpdate], None],
        steps: int | None = None,
        interval: float = FOLLOW_INTERVAL,
        detail: Callable[[], list[str]] | None = None,
        headline: Callable[[], list[str]] | None = None,
    ):
        if not interval > 0:
            raise ValueError(f"interval={interval!r} is not allowed: seconds > 0 between polls")
        self.source: RunSource = open_run(source, steps)
        self.interval = interval
        self.status = W.HTML(layout=W.Layout(min_height="1.6em"))
        # detail: what the owner adds after the source's state; headline: what replaces that state when
        # it returns parts (a dashboard that trains leads with its runner's state: paused, step 3, ...)
        self._on_update, self._detail, self._headline = on_update, detail, headline
        self._guard = PollGuard(self.show)
        self._show_lock = threading.Lock()  # the source's thread (polls) and the UI's (clicks)
        self._stop: Callable[[], None] | None = None

    @property
    def state(self) -> str:
        """The source's state: a run directory's "waiting", "running" or "finished"; "live" for a trainer."""
        return self.source.state

    @property
    def trainer(self):
        """The trainer this process drives when the source is one (``controllable``), else None."""
        return self.source.trainer if isinstance(self.source, LiveRun) else None

    def start(self) -> None:
        """Poll now, then whenever the source may have news, until ``close``."""
        self._tick()
        if self._stop is None:
            self._stop = self.source.watch(self._tick, self.interval)

    def poll(self) -> RunUpdate:
        """Read what is new now, hand it on and show the state; an error is raised."""
        return self._guard.run(self._poll)

    def _poll(self) -> RunUpdate:
        update = self.source.poll()
        self._on_update(update)
        return update

    def show(self) -> None:
        """Redraw the status line."""
        parts = self._headline() if self._headline is not None else []
        if not parts:
            state = self.source.state
            where = html.escape(self.source.describe())
            parts = [
                html.escape(self.source.origin),
                busy(where) if state == "running" else f"<b>{where}</b>" if state == "finished" else where,
            ]
        parts += self._detail() if self._detail is not None else []
        if self.error is not None:
            parts.append(
                f"<span style='color:{ERROR_COLOR}'>{html.escape(type(self.error).__name__)}: "
                f"{html.escape(str(self.error))} (tried again at the next poll)</span>"
            )
        with self._show_lock:
            self.status.value = f"<div style='font-size:{FONT_SIZE}px'>{' · '.join(p for p in parts if p)}</div>"

    def stop(self) -> None:
        """Stop polling (``start`` starts again)."""
        if self._stop is not None:
            self._stop()
            self._stop = None

    def close(self) -> None:
        self.stop()
        self.source.close()
