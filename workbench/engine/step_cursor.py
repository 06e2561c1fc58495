"""StepCursor: a trainer's step, one phase at a time, for whoever drives it.

Widgets (the dashboard, the EEPO stepper) and notebook loops step through ``Trainer.phases()``
with a cursor instead of holding the generator themselves. A cursor keeps at most one open
step; the trainer refuses a second open step from anyone else. ``discard()`` abandons an open
step, and the trainer puts the adapter and optimizer back as they were before it.
"""

from __future__ import annotations

from workbench.step.events import Phase


class StepCursor:
    def __init__(self, trainer):
        self.trainer = trainer
        self._phases = None  # the generator of the open step, if any

    @property
    def is_open(self) -> bool:
        """Whether a step is part-way through (some phases run, ``metrics`` not yet)."""
        return self._phases is not None

    def next_phase(self) -> Phase:
        """Run the next phase (the first of a new step when none is open) and return it; the
        step is over when the phase is ``metrics``. An error in a phase closes the step (the
        trainer restores the policy) and is raised."""
        if self._phases is None:
            self._phases = self.trainer.phases()
        try:
            phase = next(self._phases)
        except BaseException:
            self._phases = None
            raise
        if phase.name == "metrics":
            self.discard()  # the step is recorded: closing its generator restores nothing
        return phase

    def discard(self) -> None:
        """Abandon the open step, if any: the trainer restores the adapter and optimizer."""
        if self._phases is not None:
            phases, self._phases = self._phases, None
            phases.close()
