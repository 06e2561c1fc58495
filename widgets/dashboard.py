"""TrainingDashboard: run a trainer from buttons and watch its recorded metrics live.

Training runs on a background thread (``_runner.BackgroundRunner``) that advances the trainer
one phase at a time and checks a pause flag between phases, so Pause and Stop take effect
within one phase. The
figures draw only ``trainer.records`` (and the phases the trainer announces): nothing here
touches the model. Redraws are throttled and coalesced, and each series keeps at most
``max_points`` points (old steps are thinned), so a 10,000-step run costs the same to draw as
a 1,000-step one.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Iterable, Mapping

import ipywidgets as W
import numpy as np

from workbench.metrics import fit_reward_entropy
from workbench.metrics.entropy import FIT_MIN_POINTS
from workbench.step_cursor import StepCursor

from ._live import Throttle, busy
from ._runner import BackgroundRunner
from .dashboard_figures import COLUMNS, OPTIONAL, SERIES, add_series, figure
from .style import FONT_SIZE, STATES
from .thinned_history import ThinnedHistory

# below this share of the reward's variance explained, the fit is not extrapolated to a ceiling
FIT_MIN_R2 = 0.5
TABS = {"reward · entropy": ("reward", "entropy"), "KL · diversity": ("kl", "diversity")}


class TrainingDashboard(W.VBox):
    """Buttons that run ``trainer`` and live figures of what it records.

    Python API (the buttons call the same methods): ``start(steps)`` trains in the background;
    ``pause()`` stops after the current phase and keeps the unfinished step; ``step()`` and
    ``step_phase()`` advance one step / one phase (synchronously unless ``wait=False``);
    ``stop()`` discards an unfinished step (the policy is as after the last finished one);
    ``wait()`` joins a background run. ``figures`` holds the figures (``live_figure.LiveFigure``),
    ``status`` the status line.
    """

    _ready = False

    def __init__(self, trainer, steps: int = 50, max_points: int = 2000, min_interval: float = 0.25,
                 fit: bool = True):
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps={steps!r} is not allowed: an integer >= 1")
        if min_interval < 0:
            raise ValueError(f"min_interval={min_interval!r} is not allowed: seconds >= 0")
        if not isinstance(max_points, int) or max_points < 4:
            raise ValueError(f"max_points={max_points!r} is not allowed: an integer >= 4")
        self.trainer = trainer
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
        self.runner = BackgroundRunner(StepCursor(trainer), self._on_runner_change, name="TrainingDashboard")
        self._draw_lock = threading.Lock()  # the history vs a redraw on the timer thread
        self._show_lock = threading.Lock()

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
        self.fit_control = W.Checkbox(value=fit, description="fit R = −a·exp(H) + b", indent=False,
                                      layout=W.Layout(width="auto"))
        self.fit_control.observe(lambda _: self.redraw(), names="value")
        self.status = W.HTML()
        self.fit_line = W.HTML()

        self.figures = {name: figure(name) for name in SERIES}
        # the main view fits a 1,366 x 768 laptop screen: two panels at a time, the others a tab away
        self.tabs = W.Tab(children=[W.HBox([self.figures[n] for n in names], layout=W.Layout(grid_gap="8px"))
                                    for names in TABS.values()], titles=tuple(TABS))
        controls = W.HBox([*self.buttons.values(), self.steps_control, self.fit_control],
                          layout=W.Layout(flex_flow="row wrap", align_items="center", grid_gap="6px"))
        super().__init__([controls, self.status, self.fit_line, self.tabs], layout=W.Layout(width="100%"))
        self.add_class("wb-dashboard")  # a stable hook for styling and browser tests

        self._unsubscribe = None
        self.attach()
        self.redraw()
        self._on_runner_change()
        self._ready = True

    # --- figures ----------------------------------------------------------------------------
    def trace(self, column: str):
        """The trace that draws a history column (``meta`` holds the column name)."""
        for fig in self.figures.values():
            for trace in fig.data:
                if trace.meta == column:
                    return trace
        raise KeyError(f"column={column!r} has no trace; drawn: "
                       f"{', '.join(t.meta for f in self.figures.values() for t in f.data)}")

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
        """Draw the trainer's new records now. ``records`` given: draw those instead, as the
        whole history (a finished run's, or synthetic ones)."""
        if records is not None:
            with self._draw_lock:
                rows = records.to_dict("records") if hasattr(records, "to_dict") else list(records)
                self.history = ThinnedHistory(COLUMNS, self.max_points)
                self.history.extend(rows)
                self.skipped = []
                self._note_skips(rows)
                self._seen = len(self.trainer.records)
        self._throttle.flush()

    def _redraw_now(self) -> None:
        with self._draw_lock:
            new = self.trainer.records
            if len(new) < self._seen:  # the history was replaced (resume, truncation)
                self.history, self._seen, self.skipped = ThinnedHistory(COLUMNS, self.max_points), 0, []
            self.history.extend(new[self._seen:])
            self._note_skips(new[self._seen:])
            self._seen = len(new)
            self._draw()
            self.redraws += 1
        self._show()  # the status counts the skipped updates just drawn

    def _draw(self) -> None:
        h = self.history
        x = h.array("step")
        # integer step ticks while there are few steps (plotly would tick 0.5, 1.5, ...)
        dtick = 1 if len(h) and x[-1] - x[0] < 10 else None
        for name, fig in self.figures.items():
            drawn = {t.meta for t in fig.data}
            with fig.batch_update():
                fig.layout.xaxis.dtick = dtick
                for spec in OPTIONAL.get(name, []):
                    if spec[0] in h.present and spec[0] not in drawn:
                        add_series(fig, spec)
                for trace in fig.data:
                    if trace.meta in h.columns:
                        trace.x, trace.y = x, h.array(trace.meta)
        self._draw_skips()
        self._label_reward()
        self._draw_fit(x)

    def _label_reward(self) -> None:
        """With 0/1 rewards (countdown) accuracy is the reward: one line, named for both, instead
        of the accuracy line hiding the reward line under it."""
        h = self.history
        same = "accuracy" in h.present and np.allclose(h.array("accuracy"), h.array("reward_mean"), equal_nan=True)
        with self.figures["reward"].batch_update():
            self.trace("reward_mean").name = "reward = accuracy (0/1 rewards)" if same else "reward (mean)"
            if "accuracy" in h.present:
                self.trace("accuracy").visible = not same

    def _note_skips(self, records: Iterable[Mapping]) -> None:
        for record in records:
            if record.get("skipped"):  # the trainer's flag: this step's update was not applied
                reward = record.get("reward_mean")
                self.skipped.append((int(record["step"]), float("nan") if reward is None else float(reward)))

    def _draw_skips(self) -> None:
        marker = self.trace("skipped_update")
        with self.figures["reward"].batch_update():
            marker.visible = bool(self.skipped)
            marker.x, marker.y = [s for s, _ in self.skipped], [r for _, r in self.skipped]

    def _draw_fit(self, x: np.ndarray) -> None:
        h = self.history
        self.fit = fit_reward_entropy(h.array("entropy_mean"), h.array("reward_mean")) if len(h) else None
        meaningful = self.fit is not None and self.fit["r2"] >= FIT_MIN_R2
        ceiling = self.trace("fit_ceiling")
        show = self.fit_control.value and meaningful
        with self.figures["reward"].batch_update():
            ceiling.visible = show
            if show:
                ceiling.x, ceiling.y = [x[0], x[-1]], [self.fit["ceiling"]] * 2
        self.fit_line.value = _small(self._fit_text()) if self.fit_control.value else ""

    def _fit_text(self) -> str:
        f = self.fit
        if f is None:
            return f"fit R = −a·exp(H) + b: needs {FIT_MIN_POINTS} steps with different entropies"
        if f["r2"] < FIT_MIN_R2:
            return (f"fit R = −a·exp(H) + b over {f['n']} steps: R² = {f['r2']:.2f}, entropy explains too little "
                    f"of the reward yet to predict a ceiling (shown from R² ≥ {FIT_MIN_R2:g})")
        return (f"fit R = −a·exp(H) + b over {f['n']} steps: a = {f['a']:.3g}, b = {f['b']:.3g}, "
                f"R² = {f['r2']:.2f} · predicted ceiling b − a = <b>{f['ceiling']:.3f}</b> (reward at entropy 0)")

    # --- events -----------------------------------------------------------------------------
    def _on_phase(self, phase) -> None:
        self.phase_count += 1
        self.last_phase = phase
        self._show()
        if phase.name == "metrics":
            self.request_redraw()

    def _show(self) -> None:
        """Status line and buttons from the runner's state, the one place both threads update."""
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
        last = t.records[-1] if t.records else None
        if last:
            parts.append(f"reward {last['reward_mean']:.3f} · entropy {last['entropy_mean']:.3f} nats"
                         f" · {last['step_time']:.2f} s/step")
        if self.skipped:
            parts.append(f"<span style='color:{STATES['error']}'>⚠ {_skips_text(self.skipped)}</span>")
        if self.error is not None:
            parts.append(f"<span style='color:{STATES['error']}'>"
                         f"{html.escape(type(self.error).__name__)}: {html.escape(str(self.error))}</span>")
        return " · ".join(parts)

    # --- driving the trainer (the runner holds the thread; see _runner.py) ----------------------
    @property
    def state(self) -> str:
        """idle, running, paused, stopped or error."""
        return self.runner.state

    @property
    def error(self) -> BaseException | None:
        return self.runner.error

    @property
    def running(self) -> bool:
        """A background run is in progress."""
        return self.runner.running

    def start(self, steps: int | None = None) -> None:
        """Train ``steps`` steps (default: the step-count control) in the background."""
        self.runner.launch(steps=steps or self.steps_control.value, phases=None, wait=False)

    def step(self, wait: bool = True) -> None:
        """One training step (the rest of an unfinished one, if any)."""
        self.runner.launch(steps=1, phases=None, wait=wait)

    def step_phase(self, wait: bool = True):
        """One phase; returns its ``Phase`` when ``wait``."""
        self.runner.launch(steps=None, phases=1, wait=wait)
        return self.runner.last_phase if wait else None

    def pause(self) -> None:
        """Stop a background run after the current phase; the unfinished step is kept."""
        self.runner.pause()

    def stop(self) -> None:
        """Stop after the current phase and discard the unfinished step: the trainer's
        ``phases()`` restores the adapter and optimizer, as if the step never began."""
        self.runner.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a background run to end; True if it has. Raises the run's error, if any."""
        return self.runner.wait(timeout)

    def _on_runner_change(self) -> None:
        if not self.runner.running and len(self.trainer.records) != self._seen:
            self.redraw()  # the final redraw of a run: nothing waits on the throttle
        self._show()

    def detach(self) -> None:
        """Stop following the trainer's phases (figures keep what they show)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def attach(self) -> None:
        """Follow the trainer's phases again; steps run meanwhile are drawn at the next redraw."""
        if self._unsubscribe is None:
            self._unsubscribe = self.trainer.subscribe(self._on_phase)

    def close(self) -> None:
        """Stop following the trainer (an unfinished step is discarded) and close the widgets."""
        if self._ready:  # ipywidgets also calls close() on an instance whose __init__ raised
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


def _small(text: str) -> str:
    return f"<div style='font-size:{FONT_SIZE - 1}px;color:#333'>{text}</div>"
