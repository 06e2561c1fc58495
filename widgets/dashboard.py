"""TrainingDashboard: watch a run's recorded metrics live, of a trainer it runs from buttons or of a
run directory another process writes.

The dashboard reads its run through one feed (``following.Feed`` over ``workbench.run.source``):
the rows it polls are what it draws (``dashboard_figures.DashboardFigures``), whichever process
trains. When this process trains the run (the source is ``controllable``), training runs on a
background thread (``_runner.BackgroundRunner``) that advances the trainer one phase at a time and
checks a pause flag between phases, so Pause and Stop take effect within one phase; otherwise
there are no buttons: the process that writes the run owns its training. Nothing here touches the
model. Redraws are throttled and coalesced, and each series keeps at most ``max_points`` points
(old steps are thinned), so a 10,000-step run costs the same to draw as a 1,000-step one.
"""

from __future__ import annotations

import html
import math
import threading
from collections.abc import Iterable, Mapping

import ipywidgets as W

from workbench.engine.step_cursor import StepCursor
from workbench.metrics.registry import ENTROPY_MEAN, REWARD_MEAN, STEP_TIME

from ._live import PollGuard, Throttle, busy
from ._runner import BackgroundRunner
from .dashboard_figures import DashboardFigures
from .following import FOLLOW_INTERVAL, Feed
from .style import STATES

TRAINER_STEPS = 50  # the step-count control's default


class TrainingDashboard(W.VBox):
    """Live figures of what a run records, of ``source``: a trainer, run from the dashboard's
    buttons, or a run directory (a str or Path) that another process writes.

    A trainer: the Python API is what the buttons call. ``start(steps)`` trains in the background
    (``steps``: the step-count control, default 50); ``pause()`` stops after the current phase and
    keeps the unfinished step; ``step()`` and ``step_phase()`` advance one step / one phase
    (synchronously unless ``wait=False``); ``stop()`` discards an unfinished step (the policy is as
    after the last finished one); ``wait()`` joins a background run.

    A run directory: followed (``workbench.run.follower.RunFollower``, which never locks or writes
    it) every ``interval`` seconds. There are no buttons; the status line says where the run is:
    "waiting for the run to start", "step 12 of 50 · waiting for step 13", "finished". ``steps``:
    how many steps the run trains, when known.

    ``poll()`` reads and draws what is new at once; ``drawing`` holds the figures (``figures`` and
    ``trace(column)`` are its), ``status`` is the status line; ``close()`` stops following.
    """

    _ready = False
    runner: BackgroundRunner | None = None

    def __init__(
        self,
        source,
        steps: int | None = None,
        max_points: int = 2000,
        min_interval: float = 0.25,
        fit: bool = True,
        interval: float = FOLLOW_INTERVAL,
    ):
        if steps is not None and (not isinstance(steps, int) or steps < 1):
            raise ValueError(f"steps={steps!r} is not allowed: an integer >= 1")
        if min_interval < 0:
            raise ValueError(f"min_interval={min_interval!r} is not allowed: seconds >= 0")
        if not isinstance(max_points, int) or max_points < 4:
            raise ValueError(f"max_points={max_points!r} is not allowed: an integer >= 4")
        self.max_points = max_points
        self._throttle = Throttle(self._redraw_now, min_interval)
        self.drawing = DashboardFigures(max_points, fit, on_fit_change=lambda: self._throttle.flush())
        self.redraws = 0
        self._pending: list[Mapping] = []  # rows polled, not drawn yet
        self._draw_lock = threading.Lock()  # the rows vs a redraw on the timer thread
        self.feed = Feed(source, self._on_update, steps, interval, detail=self._summary, headline=self._runner_parts)
        controls = [self.drawing.fit_control]
        trainer = self.feed.trainer
        if trainer is not None:  # this process trains the run: the buttons drive it
            controls = [*self._trainer_controls(trainer, steps or TRAINER_STEPS), *controls]
        controls = W.HBox(controls, layout=W.Layout(flex_flow="row wrap", align_items="center", grid_gap="6px"))
        super().__init__(
            [controls, self.status, self.drawing.fit_line, self.drawing.tabs], layout=W.Layout(width="100%")
        )
        self.add_class("wb-dashboard")  # a stable hook for styling and browser tests
        self.feed.start()  # polled once now
        self._throttle.flush()
        self._show()
        self._ready = True

    def _trainer_controls(self, trainer, steps: int) -> list[W.Widget]:
        """The buttons that drive the trainer and the step-count control."""
        self.runner = BackgroundRunner(StepCursor(trainer), self._on_runner_change, name="TrainingDashboard")
        self.steps_control = W.BoundedIntText(
            value=steps, min=1, max=10**7, description="steps", layout=W.Layout(width="150px")
        )
        self.buttons = {
            "start": W.Button(description="Start", icon="play", button_style="primary", tooltip="train `steps` steps"),
            "pause": W.Button(description="Pause", icon="pause", tooltip="stop after the current phase"),
            "step": W.Button(description="Step", icon="step-forward", tooltip="one training step"),
            "step_phase": W.Button(description="Step phase", icon="forward", tooltip="one phase of a step"),
            "stop": W.Button(description="Stop", icon="stop", tooltip="stop and discard an unfinished step"),
        }
        for button in self.buttons.values():
            button.layout = W.Layout(width="auto")
        self.buttons["start"].on_click(lambda _: self.start())
        self.buttons["pause"].on_click(lambda _: self.pause())
        self.buttons["step"].on_click(lambda _: self.step(wait=False))
        self.buttons["step_phase"].on_click(lambda _: self.step_phase(wait=False))
        self.buttons["stop"].on_click(lambda _: self.stop())
        return [*self.buttons.values(), self.steps_control]

    # --- figures ----------------------------------------------------------------------------
    @property
    def status(self) -> W.HTML:
        return self.feed.status

    @property
    def figures(self) -> dict:
        """The figures (``live_figure.LiveFigure``) by panel name."""
        return self.drawing.figures

    def trace(self, column: str):
        """The trace that draws a metric (``DashboardFigures.trace``)."""
        return self.drawing.trace(column)

    @property
    def min_interval(self) -> float:
        """Seconds between redraws at least; requests in between are coalesced into one."""
        return self._throttle.interval

    @min_interval.setter
    def min_interval(self, seconds: float) -> None:
        self._throttle.interval = seconds

    def request_redraw(self) -> None:
        """Redraw now if the last redraw is older than ``min_interval``; otherwise once, at the
        end of the interval (requests in between are coalesced into that one)."""
        self._throttle()

    def poll(self) -> None:
        """Read what the run recorded since the last poll and draw it now (the dashboard does this
        by itself, after each phase of a trainer or every ``interval`` seconds of a run directory)."""
        self.feed.poll()
        self._throttle.flush()

    def redraw(self, records: Iterable[Mapping] | None = None) -> None:
        """Draw what is new now. ``records`` given: draw those instead, as the whole history (a
        finished run's, or synthetic ones); the run's own rows from before are passed over."""
        if records is None:
            self.poll()
            return
        self.feed.poll()
        rows = records.to_dict("records") if hasattr(records, "to_dict") else list(records)
        with self._draw_lock:
            self.drawing.restart()
            self.drawing.extend(rows)
            self._pending = []
        self._throttle.flush()

    def _redraw_now(self) -> None:
        with self._draw_lock:
            rows, self._pending = self._pending, []
            self.drawing.extend(rows)
            self.drawing.draw()
            self.redraws += 1
        self.feed.show()  # the status counts the skipped updates just drawn

    def _on_update(self, update) -> None:
        """A poll found something new (on the source's thread: the trainer's, or a timer's)."""
        with self._draw_lock:
            if update.restarted:  # resumed from an earlier checkpoint: its rows are the history now
                self.drawing.restart()
                self._pending = []
            self._pending += update.rows
        if update.rows or update.restarted:
            self.request_redraw()

    # --- the status line ---------------------------------------------------------------------
    def _show(self) -> None:
        """Buttons from the runner's state, and the status line: the one place every thread updates."""
        if self.runner is not None:
            running = self.running
            for name in ("start", "step", "step_phase"):
                self.buttons[name].disabled = running
            self.buttons["pause"].disabled = not running
            self.buttons["stop"].disabled = not running and not self.runner.cursor.is_open
        self.feed.show()

    def _runner_parts(self) -> list[str]:
        """The status line's lead when this dashboard trains: its runner's state and the trainer's step."""
        if self.runner is None:
            return []
        state = f"<b style='color:{STATES[self.state]}'>{self.state}</b>"
        parts = [busy(state) if self.running else state, f"step {self.runner.cursor.trainer.step_index}"]
        last_phase = self.runner.last_phase
        phase = html.escape(last_phase.name) if last_phase is not None else None
        open_step = self.runner.cursor.is_open
        if self.running:
            parts.append("running" + (f", after phase <code>{phase}</code>" if open_step and phase else "") + "…")
        elif open_step and phase:
            parts.append(f"unfinished step, last phase <code>{phase}</code>")
        elif phase:
            parts.append(f"last phase <code>{phase}</code>")
        if self.runner.progress_text:
            parts.append(self.runner.progress_text)
        if self.runner.error is not None:
            error = self.runner.error
            parts.append(
                f"<span style='color:{STATES['error']}'>"
                f"{html.escape(type(error).__name__)}: {html.escape(str(error))}</span>"
            )
        return parts

    def _summary(self) -> list[str]:
        """The last step drawn in numbers, and the skipped updates."""
        parts = []
        last, skipped = self.drawing.last_row, self.drawing.skipped
        if last:
            parts.append(
                f"reward {_number(last.get(REWARD_MEAN))} · entropy {_number(last.get(ENTROPY_MEAN))} "
                f"nats · {_number(last.get(STEP_TIME), 2)} s/step"
            )
        if skipped:
            parts.append(f"<span style='color:{STATES['error']}'>⚠ {_skips_text(skipped)}</span>")
        return parts

    # --- driving the trainer (the runner holds the thread; see _runner.py) ----------------------
    @property
    def state(self) -> str:
        """A trainer's: idle, running, paused, stopped or error; a followed run's: waiting, running
        or finished."""
        return self.runner.state if self.runner is not None else self.feed.state

    @property
    def error(self) -> BaseException | None:
        """The error that stopped the background run, or that the last poll met."""
        return self.runner.error if self.runner is not None and self.runner.error else self.feed.error

    @property
    def running(self) -> bool:
        """A background run of this dashboard's trainer is in progress."""
        return self.runner is not None and self.runner.running

    def _driver(self) -> BackgroundRunner:
        if self.runner is None:
            raise RuntimeError(
                f"this dashboard follows {self.feed.source.location}, which another process trains: "
                "starting, pausing, stepping and stopping it are that process's"
            )
        return self.runner

    def start(self, steps: int | None = None) -> None:
        """Train ``steps`` steps (default: the step-count control) in the background."""
        self._driver().launch(steps=steps or self.steps_control.value, phases=None, wait=False)

    def step(self, wait: bool = True) -> None:
        """One training step (the rest of an unfinished one, if any)."""
        self._driver().launch(steps=1, phases=None, wait=wait)

    def step_phase(self, wait: bool = True):
        """One phase; returns its ``Phase`` when ``wait``."""
        self._driver().launch(steps=None, phases=1, wait=wait)
        return self._driver().last_phase if wait else None

    def pause(self) -> None:
        """Stop a background run after the current phase; the unfinished step is kept."""
        self._driver().pause()

    def stop(self) -> None:
        """Stop after the current phase and discard the unfinished step: the trainer's
        ``phases()`` restores the adapter and optimizer, as if the step never began."""
        self._driver().stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a background run to end; True if it has. Raises the run's error, if any."""
        return self._driver().wait(timeout)

    def _on_runner_change(self) -> None:
        if not self._driver().running:
            PollGuard.tick(self.poll)  # the final redraw of a run: nothing waits on the throttle
        self._show()

    def detach(self) -> None:
        """Stop following the run (figures keep what they show)."""
        self.feed.stop()

    def attach(self) -> None:
        """Follow the run again; steps recorded meanwhile are drawn at once."""
        self.feed.start()

    def close(self) -> None:
        """Stop following the run (a trainer's unfinished step is discarded) and close the widgets."""
        if self._ready:  # ipywidgets also calls close() on an instance whose __init__ raised
            if self.runner is not None:
                self.stop()
            self.feed.close()
            self._throttle.cancel()
            self.drawing.close()
        super().close()


def _skips_text(skipped: list[tuple[int, float]]) -> str:
    """The status text, e.g. "2 updates skipped (NaN/inf loss) at steps 3, 7" (the last five steps)."""
    many = len(skipped) > 1
    steps = ("…, " if len(skipped) > 5 else "") + ", ".join(str(step) for step, _ in skipped[-5:])
    return f"{len(skipped)} update{'s' if many else ''} skipped (NaN/inf loss) at step{'s' if many else ''} {steps}"


def _number(value, digits: int = 3) -> str:
    """A recorded number for the status line; metrics.jsonl stores NaN as null."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
