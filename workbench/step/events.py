"""Events a trainer emits: one ``Phase`` per named phase of a step, and the step's result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workbench.step.batch import RolloutBatch


@dataclass
class Phase:
    """A named phase that has just finished, with the (partial) batch and its numbers."""

    name: str
    step: int
    batch: RolloutBatch | None
    numbers: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepResult:
    step: int
    metrics: dict[str, float]
    batch: RolloutBatch
