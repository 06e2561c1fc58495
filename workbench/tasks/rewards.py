"""Rewards from TRL-style reward functions, and batch scoring for any task.

A reward function is called once per batch, with keyword arguments as TRL does::

    def reward(prompts: list[str], completions: list[str], **columns) -> list[float]: ...

``columns`` holds one list per ``Problem.meta`` key (a DatasetTask's other columns) plus
``answer`` (the reference answer, unless the data has its own ``answer`` column). The
reward of a completion is the weighted sum over the functions; the answer, strategy label
and ``parsed`` flag still come from the wrapped task's verifier.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from workbench.tasks.base import Problem, Score

RewardFunc = Callable[..., Sequence[float]]
_ERROR_MODES = ("raise", "zero")
_RESERVED = ("prompts", "completions")
_SHOW = 200


class RewardFunctionError(ValueError):
    """A reward function raised, returned the wrong number of values, or a missing/NaN value."""


def score_batch(task: Any, problems: Sequence[Problem], completions: Sequence[str]) -> list[Score]:
    """Scores of ``completions`` (one per problem): ``task.score_batch`` when the task has
    one, else ``task.score`` item by item. The trainer scores through this function."""
    if len(problems) != len(completions):
        raise ValueError(
            f"{len(problems)} problems but {len(completions)} completions; give one completion per problem"
        )
    batch = getattr(task, "score_batch", None)
    if callable(batch):
        return list(batch(list(problems), list(completions)))
    return [task.score(p, c) for p, c in zip(problems, completions)]


class RewardFunctionTask:
    """``base`` with rewards from ``reward_funcs`` (weighted by ``reward_weights``, default 1).

    ``reward_errors="raise"`` (default) raises :class:`RewardFunctionError` on a failing
    function; ``"zero"`` gives the affected completions reward 0 and counts each failure
    (one per function and completion) in ``error_count``. When a batch call fails in
    ``"zero"`` mode, the function is called again per completion so only the completions
    it fails on lose their reward.
    """

    def __init__(
        self,
        base: Any,
        reward_funcs: RewardFunc | Sequence[RewardFunc],
        reward_weights: Sequence[float] | None = None,
        reward_errors: str = "raise",
    ):
        funcs = [reward_funcs] if callable(reward_funcs) else list(reward_funcs)
        if not funcs:
            raise ValueError("reward_funcs is empty; give at least one reward function")
        for fn in funcs:
            if not callable(fn):
                raise TypeError(f"reward function {fn!r} is not callable")
        if reward_weights is None:
            weights = [1.0] * len(funcs)
        else:
            weights = [float(w) for w in reward_weights]
            if len(weights) != len(funcs):
                raise ValueError(
                    f"{len(weights)} reward_weights for {len(funcs)} reward functions; give one weight per function"
                )
            if not all(math.isfinite(w) for w in weights):
                raise ValueError(f"reward_weights={list(reward_weights)!r} must be finite numbers")
        if reward_errors not in _ERROR_MODES:
            raise ValueError(f"reward_errors={reward_errors!r} is not a mode; allowed: {', '.join(_ERROR_MODES)}")
        self.base = base
        self.reward_funcs = funcs
        self.reward_weights = weights
        self.reward_errors = reward_errors
        self.error_count = 0

    @property
    def name(self) -> str:
        return self.base.name

    def prompts(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        return self.base.prompts(split, n, seed=seed)

    def __getattr__(self, attr: str) -> Any:  # demonstration, rows, ... of the base task
        if attr == "base":  # not yet set (e.g. during unpickling)
            raise AttributeError(attr)
        return getattr(self.base, attr)

    def score(self, problem: Problem, completion: str) -> Score:
        return self.score_batch([problem], [completion])[0]

    def score_batch(self, problems: Sequence[Problem], completions: Sequence[str]) -> list[Score]:
        problems, completions = list(problems), list(completions)
        base_scores = score_batch(self.base, problems, completions)
        if not problems:
            return []
        prompts = [p.prompt for p in problems]
        columns = _columns(problems)
        totals = [0.0] * len(problems)
        failed = [False] * len(problems)
        for fn, weight in zip(self.reward_funcs, self.reward_weights):
            values = self._call(fn, prompts, completions, columns)
            for i, value in enumerate(values):
                if value is None:
                    failed[i] = True
                else:
                    totals[i] += weight * value
        return [
            Score(0.0 if bad else total, s.answer, s.strategy, s.parsed)
            for total, bad, s in zip(totals, failed, base_scores)
        ]

    # --- calling one function -------------------------------------------------------
    def _call(self, fn: RewardFunc, prompts: list[str], completions: list[str], columns: dict) -> list[float | None]:
        """Rewards of ``fn`` for the batch; None marks a failure (only in "zero" mode)."""
        n = len(prompts)
        error: Exception | None  # what the batch call raised, if it raised
        try:
            raw = fn(prompts=prompts, completions=completions, **columns)
        except Exception as e:
            problem, error, at = f"raised {type(e).__name__}: {e}", e, None
        else:
            values = _as_list(raw)
            if values is None:
                problem, error, at = f"returned {type(raw).__name__}, not a list of floats", None, 0
            elif len(values) != n:
                problem, error, at = f"returned {len(values)} values for {n} completions", None, min(len(values), n - 1)
            else:
                bad = [i for i, v in enumerate(values) if _number(v) is None]
                if not bad:
                    return [_number(v) for v in values]
                if self.reward_errors == "raise":
                    raise self._error(fn, f"returned {values[bad[0]]!r}, not a number", prompts, completions, bad[0])
                self.error_count += len(bad)
                return [None if i in set(bad) else _number(v) for i, v in enumerate(values)]
        # The whole batch call failed: find the first completion it fails on, one at a time.
        if self.reward_errors == "raise":
            if at is None:
                at = self._first_failing(fn, prompts, completions, columns)
            raise self._error(fn, problem, prompts, completions, at or 0) from error
        return [self._single(fn, prompts, completions, columns, i) for i in range(n)]

    def _single(self, fn, prompts, completions, columns, i) -> float | None:
        try:
            values = _as_list(fn(prompts=prompts[i : i + 1], completions=completions[i : i + 1], **_row(columns, i)))
        except Exception:
            values = None
        value = _number(values[0]) if values is not None and len(values) == 1 else None
        if value is None:
            self.error_count += 1
        return value

    def _first_failing(self, fn, prompts, completions, columns) -> int | None:
        for i in range(len(prompts)):
            try:
                fn(prompts=prompts[i : i + 1], completions=completions[i : i + 1], **_row(columns, i))
            except Exception:
                return i
        return None

    def _error(self, fn, problem: str, prompts, completions, i: int) -> RewardFunctionError:
        return RewardFunctionError(
            f"reward function {_name(fn)!r} {problem}; first offending prompt: {_clip(prompts[i])!r}, "
            f"completion: {_clip(completions[i])!r} (use reward_errors='zero' to score failures 0)"
        )

    def __repr__(self) -> str:
        names = ", ".join(_name(fn) for fn in self.reward_funcs)
        return f"RewardFunctionTask({self.base!r}, [{names}], weights={self.reward_weights})"


def _columns(problems: list[Problem]) -> dict[str, list]:
    keys: list[str] = []
    for p in problems:
        for key in p.meta:
            if key not in keys and key not in _RESERVED:
                keys.append(key)
    columns = {key: [p.meta.get(key) for p in problems] for key in keys}
    columns.setdefault("answer", [p.answer for p in problems])
    return columns


def _row(columns: dict[str, list], i: int) -> dict[str, list]:
    return {key: values[i : i + 1] for key, values in columns.items()}


def _as_list(raw: Any) -> list | None:
    if hasattr(raw, "tolist") and not isinstance(raw, (str, bytes)):
        raw = raw.tolist()  # numpy arrays, torch tensors
    if isinstance(raw, (list, tuple)):
        return list(raw)
    return None


def _number(value: Any) -> float | None:
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except Exception:
            return None
    if isinstance(value, (int, float)):  # bool included
        value = float(value)
        return value if math.isfinite(value) else None
    return None


def _name(fn: Any) -> str:
    if hasattr(fn, "func") and hasattr(fn, "args"):  # functools.partial
        return _name(fn.func)
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def _clip(text: Any) -> str:
    text = str(text)
    return text if len(text) <= _SHOW else text[:_SHOW] + "..."
