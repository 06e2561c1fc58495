"""BackgroundRunner: advance a trainer phase by phase on a thread, with pause and stop.

A widget's buttons call ``launch``/``pause``/``stop``; the runner calls ``on_change`` whenever
its state or progress changes, so the widget can redraw its buttons and status. ``state`` is
set before each call, never inferred from whether the thread is still alive: the last call
comes from the worker thread itself, just before it ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from workbench.engine.step_cursor import StepCursor
from workbench.step.events import Phase

STATES = ("idle", "running", "paused", "stopped", "error")


class BackgroundRunner:
    def __init__(self, cursor: StepCursor, on_change: Callable[[], None], name: str = "workbench"):
        self.cursor = cursor
        self.on_change = on_change
        self.name = name
        self.state = "idle"
        self.error: BaseException | None = None
        self.progress_text = ""  # "3/10 steps" while a multi-step run is in progress
        self.last_phase: Phase | None = None
        self._pause = threading.Event()
        self._discard = False
        self._drive_lock = threading.Lock()  # one driver of the trainer's phases at a time
        self._worker: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"

    def launch(self, steps: int | None, phases: int | None, wait: bool) -> None:
        """Run ``steps`` steps or ``phases`` phases, on a thread unless ``wait`` (then errors raise)."""
        if self.running:
            raise RuntimeError("a background run is in progress: pause() or stop() it first")
        self._pause.clear()
        self._discard = False
        self.error = None
        self.state = "running"
        self.on_change()
        if wait:
            self._drive(steps, phases)
            if self.error is not None:
                raise self.error
        else:
            self._worker = threading.Thread(target=self._drive, args=(steps, phases), daemon=True, name=self.name)
            self._worker.start()

    def pause(self) -> None:
        """Stop after the current phase; an unfinished step is kept."""
        self._pause.set()

    def stop(self) -> None:
        """Stop after the current phase and discard the unfinished step: the trainer restores
        the adapter and optimizer, as if the step never began."""
        self._discard = True
        self._pause.set()
        if self._worker is not None:
            self._worker.join()  # at most the phase in flight
        self._finish("stopped")

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a background run to end; True if it has. Raises the run's error, if any."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
            if worker.is_alive():
                return False
        if self.error is not None:
            raise self.error
        return True

    def _drive(self, steps: int | None, phases: int | None) -> None:
        done_steps = done_phases = 0
        try:
            with self._drive_lock:
                while not self._pause.is_set():
                    if steps is not None and done_steps >= steps or phases is not None and done_phases >= phases:
                        break
                    phase = self.cursor.next_phase()
                    self.last_phase = phase
                    done_steps += phase.name == "metrics"
                    done_phases += 1
                    if steps is not None and steps > 1:
                        self.progress_text = f"{done_steps}/{steps} steps"
        except Exception as error:  # shown by the widget; wait() and synchronous calls raise it
            self.error = error
        finally:
            self.progress_text = ""
            self._finish(
                "error" if self.error else "stopped" if self._discard else "paused" if self._pause.is_set() else "idle"
            )

    def _finish(self, state: str) -> None:
        if self._discard and self.cursor.is_open:
            with self._drive_lock:
                self.cursor.discard()  # the trainer restores the adapter and optimizer
        self.state = state
        self.on_change()
