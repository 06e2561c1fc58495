"""Verifiable tasks: built-in synthetic tasks with strategy labels, and adapters for your own data."""

from __future__ import annotations

from .base import SPLITS, UNPARSED, Problem, Score, Task
from .coins import Coins
from .countdown import Countdown
from .dataset import DatasetTask
from .rewards import RewardFunctionError, RewardFunctionTask, score_batch

_BUILTIN = {"countdown": Countdown, "coins": Coins}


def names() -> list[str]:
    """Names of the built-in tasks."""
    return sorted(_BUILTIN)


def get(name: str, **options) -> Task:
    """A built-in task by name, e.g. ``get("countdown")``; options override its fields."""
    if name not in _BUILTIN:
        raise ValueError(f"task={name!r} is not a built-in task; allowed: {', '.join(names())}")
    return _BUILTIN[name](**options)


__all__ = [
    "SPLITS", "UNPARSED", "Problem", "Score", "Task", "Coins", "Countdown", "get", "names",
    "DatasetTask", "RewardFunctionTask", "RewardFunctionError", "score_batch",
]
