"""The Task protocol: prompts for a split, and a verifier that scores untrusted completions.

A task never evaluates model output as code: completions are parsed by small, strict
parsers and anything unexpected scores 0 with ``parsed=False``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

SPLITS = ("train", "test", "ood")
# a reward above this is a success: accuracy, pass@k, distinct correct strategies, pivot flips
SUCCESS_THRESHOLD = 0.5


def is_success(reward):
    """Whether a reward (a float or a tensor of them) counts as solved."""
    return reward > SUCCESS_THRESHOLD


@dataclass(frozen=True)
class Problem:
    """One prompt of a task. ``meta`` holds what the verifier needs (numbers, target, columns)."""

    id: str
    prompt: str
    answer: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Score:
    """What a verifier says of one completion.

    ``strategy`` labels the solution strategy (equal labels = same strategy); it is None
    when the completion could not be parsed (the degenerate cluster).
    """

    reward: float
    answer: str | None
    strategy: str | None
    parsed: bool


UNPARSED = Score(reward=0.0, answer=None, strategy=None, parsed=False)


@runtime_checkable
class Task(Protocol):
    name: str

    def prompts(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        """``n`` problems of ``split`` ("train", "test" or "ood"), reproducible from ``seed``."""
        ...

    def score(self, problem: Problem, completion: str) -> Score:
        """Verify one completion; must never raise on any string."""
        ...


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not a split; allowed: {', '.join(SPLITS)}")


def stable_bucket(key: str, buckets: int = 5) -> int:
    """A hash bucket that is the same on every machine and Python run (unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % buckets
