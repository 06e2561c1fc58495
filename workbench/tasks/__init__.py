"""Verifiable tasks: built-in synthetic tasks with strategy labels, and adapters for your own data."""

from __future__ import annotations

from workbench.tasks.base import SPLITS, SUCCESS_THRESHOLD, UNPARSED, Problem, Score, Task, is_success
from workbench.tasks.coins import Coins
from workbench.tasks.countdown import Countdown
from workbench.tasks.dataset import DatasetError, DatasetTask
from workbench.tasks.reasoning_gym import PREFIX as REASONING_GYM_PREFIX
from workbench.tasks.reasoning_gym import ReasoningGymTask
from workbench.tasks.rewards import RewardFunctionError, RewardFunctionTask, score_batch

_BUILTIN = {"countdown": Countdown, "coins": Coins}
# a run trained outside the workbench (a TRL script of one's own, an imported verl or TRL run): its
# prompts and rewards live in that script, so nothing here can sample or score the task again
EXTERNAL_PREFIX = "external:"


def is_external(name: str) -> bool:
    return name.startswith(EXTERNAL_PREFIX)


def names() -> list[str]:
    """Names of the built-in tasks (``reasoning_gym:NAME`` tasks are not listed)."""
    return sorted(_BUILTIN)


def get(name: str, **options) -> Task:
    """A task by name: a built-in, e.g. ``get("countdown")``, whose fields ``options`` override; or
    a reasoning-gym dataset, ``get("reasoning_gym:chain_sum", max_terms=2)`` (see
    :class:`ReasoningGymTask`; needs ``pip install -e '.[real]'``)."""
    if isinstance(name, str) and name.startswith(REASONING_GYM_PREFIX):
        return ReasoningGymTask.from_name(name, **options)
    if name not in _BUILTIN:
        raise ValueError(
            f"task={name!r} is not a built-in task; allowed: {', '.join(names())} or {REASONING_GYM_PREFIX}NAME"
        )
    return _BUILTIN[name](**options)


def from_config(name: str) -> Task:
    """The task ``RunConfig.task`` names: a built-in, ``reasoning_gym:NAME`` or a data file."""
    if is_external(name):
        raise ValueError(
            f"task={name!r} was trained outside the workbench, with prompts and reward functions of its own: "
            "there is no task here to sample or score (pass the task itself, e.g. Trainer(..., task=...))"
        )
    if name in names() or name.startswith(REASONING_GYM_PREFIX):
        return get(name)
    return DatasetTask.from_file(name)


__all__ = [
    "SPLITS",
    "SUCCESS_THRESHOLD",
    "UNPARSED",
    "Problem",
    "Score",
    "Task",
    "is_success",
    "Coins",
    "Countdown",
    "from_config",
    "get",
    "names",
    "DatasetError",
    "DatasetTask",
    "ReasoningGymTask",
    "REASONING_GYM_PREFIX",
    "EXTERNAL_PREFIX",
    "is_external",
    "RewardFunctionTask",
    "RewardFunctionError",
    "score_batch",
]
