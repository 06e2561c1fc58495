"""TrainingDashboard: watch a run's recorded metrics live, of a trainer it runs from buttons or of a
run directory another process writes.

With a trainer, training runs on a background thread (``_runner.BackgroundRunner``) that advances
the trainer one phase at a time and checks a pause flag between phases, so Pause and Stop take
effect within one phase. With a run directory (``following.RunWatch``) the dashboard polls for new
rows and has no buttons: the process that writes the run owns its training. Either way the
figures draw only recorded metrics (``trainer.records``, metrics.jsonl): nothing here touches the
model. Redraws are throttled and coalesced, and each series keeps at most ``max_points`` points
(old steps are thinned), so a 10,000-step run costs the same to draw as a 1,000-step one.
"""

from __future__ import annotations

import html
import math
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

import ipywidgets as W

from workbench.step_cursor import StepCursor

from ._live import Throttle, busy
from ._runner import BackgroundRunner
from .dashboard_figures import COLUMNS, SERIES, DashboardDrawing, figure
from .following import FOLLOW_INTERVAL, RunWatch, is_run_directory
from .style import FONT_SIZE, STATES
from .thinned_history import ThinnedHistory

TABS = {"reward · entropy": ("reward", "entropy"), "KL · diversity": ("kl", "diversity")}
TRAINER_STEPS = 50  # the step-count control's default


class TrainingDashboard(DashboardDrawing, W.VBox):
    """Live figures of what a run records, of ``source``: a trainer, run from the dashboard's
    buttons, or a run directory (a str or Path) that another process writes.

    A trainer: the Python API is what the buttons call. ``start(steps)`` trains in the background
    (``steps``: the step-count control, default 50); ``pause()`` stops after the current phase and
    keeps the unfinished step; ``step()`` and ``step_phase()`` advance one step / one phase
    (synchronously unless ``wait=False``); ``stop()`` discards an unfinished step (the policy is as
    after the last finished one); ``wait()`` joins a background run.

    A run directory: followed (``workbench.run_follower.RunFollower``, which never locks or writes
    it) every ``interval`` seconds, and ``poll()`` reads and draws what is new at once. There are
    no buttons; the status line says where the run is: "waiting for the run to start", "step 12
    of 50 · waiting for step 13", "finished". ``steps``: how many steps the run trains, when known.

    ``figures`` holds the figures (``live_figure.LiveFigure``), ``status`` the status line;
    ``close()`` stops following.
    """

    _ready = False
    runner: BackgroundRunner | None = None
    watch: RunWatch | None = None

    def __init__(self, source, steps: int | None = None, max_points: int = 2000, min_interval: float = 0.25,
                 fit: bool = True, interval: float = FOLLOW_INTERVAL):
        if steps is not None and (not isinstance(steps, int) or steps < 1):
            raise ValueError(f"steps={steps!r} is not allowed: an integer >= 1")
        if min_interval < 0:
            raise ValueError(f"min_interval={min_interval!r} is not allowed: seconds >= 0")
        if not isinstance(max_points, int) or max_points < 4:
            raise ValueError(f"max_points={max_points!r} is not allowed: an integer >= 4")
        self.run_dir = Path(source) if is_run_directory(source) else None
        self.trainer = None if self.run_dir is not None else source
        self.max_points = max_points
        self._throttle = Throttle(self._redraw_now, min_interval)
        self.history = ThinnedHistory(COLUMNS, max_points)
        self.fit: dict[str, float] | None = None
        # (step, reward) of every step whose update the trainer skipped (non-finite loss or
        # gradient): kept whole, never thinned, so no skip is averaged or drawn away
        self.skipped: list[tuple[int, float]] = []
        self.phase_count = 0  # phases announced by the trainer while subscribed
        self.last_phase = None
        self.redraws = 0
        self._seen = 0  # trainer records already in self.history
        self._arrived: list[Mapping] = []  # rows of a followed run not drawn yet
        self._last_row: Mapping | None = None  # the last row drawn
        self._draw_lock = threading.Lock()  # the history vs a redraw on the timer thread
        self._show_lock = threading.Lock()

        self.fit_control = W.Checkbox(value=fit, description="fit R = −a·exp(H) + b", indent=False,
                                      layout=W.Layout(width="auto"))
        self.fit_control.observe(lambda _: self.redraw(), names="value")
        self.fit_line = W.HTML()
        self.figures = {name: figure(name) for name in SERIES}
        # the main view fits a 1,366 x 768 laptop screen: two panels at a time, the others a tab away
        self.tabs = W.Tab(children=[W.HBox([self.figures[n] for n in names], layout=W.Layout(grid_gap="8px"))
                                    for names in TABS.values()], titles=tuple(TABS))
        if self.trainer is not None:
            controls, self.status = self._trainer_controls(steps or TRAINER_STEPS), W.HTML()
        else:
            self.watch = RunWatch(self.run_dir, self._on_run_update, steps, interval,
                                  detail=lambda: " · ".join(self._summary()), name="TrainingDashboard")
            controls, self.status = [self.fit_control], self.watch.status
        controls = W.HBox(controls, layout=W.Layout(flex_flow="row wrap", align_items="center", grid_gap="6px"))
        super().__init__([controls, self.status, self.fit_line, self.tabs], layout=W.Layout(width="100%"))
        self.add_class("wb-dashboard")  # a stable hook for styling and browser tests

        self._unsubscribe = None
        self.attach()  # a run directory: polled once now
        self.redraw()
        if self.runner is not None:
            self._on_runner_change()
        self._ready = True

    def _trainer_controls(self, steps: int) -> list[W.Widget]:
        """The buttons that drive the trainer, the step-count control and the fit checkbox."""
        self.runner = BackgroundRunner(StepCursor(self.trainer), self._on_runner_change, name="TrainingDashboard")
        self.steps_control = W.BoundedIntText(value=steps, min=1, max=10**7, description="steps",
                                              layout=W.Layout(width="150px"))
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
        return [*self.buttons.values(), self.steps_control, self.fit_control]

    # --- figures ----------------------------------------------------------------------------
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

    def redraw(self, records: Iterable[Mapping] | None = None) -> None:
        """Draw the new records now. ``records`` given: draw those instead, as the whole history
        (a finished run's, or synthetic ones)."""
        if records is not None:
            with self._draw_lock:
                rows = records.to_dict("records") if hasattr(records, "to_dict") else list(records)
                self._start_history()
                self.history.extend(rows)
                self._note_skips(rows)
                self._last_row = rows[-1] if rows else None
                self._seen = len(self.trainer.records) if self.trainer is not None else 0
                self._arrived = []
        self._throttle.flush()

    def poll(self) -> None:
        """Read what the followed run directory wrote since the last poll and draw it now (the
        dashboard does this every ``interval`` seconds by itself)."""
        if self.watch is None:
            raise RuntimeError("this dashboard draws a trainer, not a run directory: redraw() draws its new records")
        self.watch.poll()
        self._throttle.flush()

    def _start_history(self) -> None:
        self.history, self.skipped, self._last_row = ThinnedHistory(COLUMNS, self.max_points), [], None

    def _redraw_now(self) -> None:
        with self._draw_lock:
            rows = self._take_new_records()
            self.history.extend(rows)
            self._note_skips(rows)
            self._last_row = rows[-1] if rows else self._last_row
            self._draw()
            self.redraws += 1
        self._show()  # the status counts the skipped updates just drawn

    def _take_new_records(self) -> list[Mapping]:
        """The records not drawn yet; the history starts over when the trainer's went back."""
        if self.trainer is None:
            rows, self._arrived = self._arrived, []
            return rows
        new = self.trainer.records
        if len(new) < self._seen:  # the history was replaced (resume, truncation)
            self._start_history()
            self._seen = 0
        rows, self._seen = new[self._seen:], len(new)
        return rows

    def _on_run_update(self, update) -> None:
        """A poll of the followed run found something new (on the watch's timer thread)."""
        with self._draw_lock:
            if update.restarted:  # resumed from an earlier checkpoint: its rows are the history now
                self._start_history()
                self._arrived = []
            self._arrived += update.rows
        if update.rows or update.restarted:
            self.request_redraw()

    # --- events -----------------------------------------------------------------------------
    def _on_phase(self, phase) -> None:
        self.phase_count += 1
        self.last_phase = phase
        self._show()
        if phase.name == "metrics":
            self.request_redraw()

    def _show(self) -> None:
        """Status line and buttons from the runner's state (or the followed run's), the one place
        every thread updates."""
        if self.watch is not None:
            self.watch.show()
            return
        with self._show_lock:  # the worker thread (phases, the run's end) and the UI thread (clicks)
            self.status.value = f"<div style='font-size:{FONT_SIZE}px'>{self._status_text()}</div>"
            running = self.running
            for name in ("start", "step", "step_phase"):
                self.buttons[name].disabled = running
            self.buttons["pause"].disabled = not running
            self.buttons["stop"].disabled = not running and not self.runner.cursor.is_open

    def _status_text(self) -> str:
        t = self.trainer
        state = f"<b style='color:{STATES[self.state]}'>{self.state}</b>"
        parts = [busy(state) if self.running else state, f"step {t.step_index}"]
        phase = html.escape(self.last_phase.name) if self.last_phase is not None else None
        if self.running:
            parts.append(f"running step {t.step_index}" + (f", after phase <code>{phase}</code>"
                                                            if self.runner.cursor.is_open and phase else "") + "…")
        elif self.runner.cursor.is_open and phase:
            parts.append(f"unfinished step, last phase <code>{phase}</code>")
        elif phase:
            parts.append(f"last phase <code>{phase}</code>")
        if self.runner.progress_text:
            parts.append(self.runner.progress_text)
        parts += self._summary()
        if self.error is not None:
            parts.append(f"<span style='color:{STATES['error']}'>"
                         f"{html.escape(type(self.error).__name__)}: {html.escape(str(self.error))}</span>")
        return " · ".join(parts)

    def _summary(self) -> list[str]:
        """The last step drawn in numbers, and the skipped updates."""
        parts = []
        last = self.trainer.records[-1] if self.trainer is not None and self.trainer.records else self._last_row
        if last:
            parts.append(f"reward {_number(last.get('reward_mean'))} · entropy {_number(last.get('entropy_mean'))} "
                         f"nats · {_number(last.get('step_time'), 2)} s/step")
        if self.skipped:
            parts.append(f"<span style='color:{STATES['error']}'>⚠ {_skips_text(self.skipped)}</span>")
        return parts

    # --- driving the trainer (the runner holds the thread; see _runner.py) ----------------------
    @property
    def state(self) -> str:
        """A trainer's: idle, running, paused, stopped or error; a followed run's: waiting, running
        or finished."""
        return self.runner.state if self.runner is not None else self.watch.state

    @property
    def error(self) -> BaseException | None:
        """The error that stopped the background run, or that the last poll of the run directory met."""
        return self.runner.error if self.runner is not None else self.watch.error

    @property
    def running(self) -> bool:
        """A background run of this dashboard's trainer is in progress."""
        return self.runner is not None and self.runner.running

    def _driver(self) -> BackgroundRunner:
        if self.runner is None:
            raise RuntimeError(f"this dashboard follows {self.run_dir}, which another process trains: starting, "
                               "pausing, stepping and stopping it are that process's")
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
        return self.runner.last_phase if wait else None

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
        if not self.runner.running and len(self.trainer.records) != self._seen:
            self.redraw()  # the final redraw of a run: nothing waits on the throttle
        self._show()

    def detach(self) -> None:
        """Stop following the trainer's phases, or the run directory (figures keep what they show)."""
        if self.watch is not None:
            self.watch.close()
        elif self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def attach(self) -> None:
        """Follow the trainer's phases, or the run directory, again; steps run meanwhile are drawn
        at the next redraw."""
        if self.watch is not None:
            self.watch.start()
        elif self._unsubscribe is None:
            self._unsubscribe = self.trainer.subscribe(self._on_phase)

    def close(self) -> None:
        """Stop following the trainer (an unfinished step is discarded) or the run directory, and
        close the widgets."""
        if self._ready:  # ipywidgets also calls close() on an instance whose __init__ raised
            if self.runner is not None:
                self.stop()
            self.detach()
            self._throttle.cancel()
            for fig in self.figures.values():
                fig.close()
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
