"""Countdown: reach a target by combining every given number once with + - *.

The completion is a chain of steps, each combining two numbers still in the pool:
``Make 22 from 3 5 7.`` -> ``3*5=15,15+7=22``. The strategy of a completion is its
expression tree in canonical form (commutative operands sorted, same-op chains
flattened), so ``5*3=15,7+15=22`` and ``3*5=15,15+7=22`` are one strategy, ``(3*5)+7``,
while ``(7-5)*... `` would be another. Problems are generated only where the target has
at least ``min_strategies`` (3) distinct strategies, so exploration has something to find.

Split ``test`` holds the (numbers, target) pairs whose stable hash falls in bucket 0 of 5 (20%), ``train``
the rest, so they never overlap; ``ood`` uses four numbers up to 12 and targets up to 199, and
also keeps only bucket 0, so no four-number problem the embedded model was pretrained on
(four numbers up to 9, train buckets) can appear in it.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache

from workbench.tasks.base import UNPARSED, Problem, Score, check_split, stable_bucket

# A tree is an int (a given number) or (op, left, right).
Tree = int | tuple

_STEP = re.compile(r"(\d{1,6})([+\-*])(\d{1,6})=(\d{1,7})")
_OPS = "+-*"


def _apply(op: str, a: int, b: int) -> int | None:
    if op == "+":
        return a + b
    if op == "*":
        return a * b
    return a - b if a >= b else None  # intermediate results stay non-negative


def _tree_step(op: str, a: int, b: int) -> int:
    """``_apply`` on a step of a tree ``_combine`` built: its subtractions never go negative."""
    value = _apply(op, a, b)
    if value is None:
        raise ValueError(f"{a}{op}{b} goes negative: not a step of a built tree")
    return value


def _value(tree: Tree) -> int:
    if isinstance(tree, int):
        return tree
    op, left, right = tree
    return _tree_step(op, _value(left), _value(right))


def _terms(tree: Tree, op: str) -> list[str]:
    """Flatten a same-op chain of a commutative operator into its canonical terms."""
    if isinstance(tree, tuple) and tree[0] == op:
        return _terms(tree[1], op) + _terms(tree[2], op)
    return [canonical(tree, parent=op)]


def canonical(tree: Tree, parent: str | None = None) -> str:
    """Canonical text of an expression tree: the strategy label."""
    if isinstance(tree, int):
        return str(tree)
    op, left, right = tree
    if op in "+*":
        text = op.join(sorted(_terms(tree, op)))
    else:
        text = f"{canonical(left, op)}-{canonical(right, '-r')}"
    return text if parent is None else f"({text})"


def _combine(pool: tuple[Tree, ...]):
    """Every tree obtained by combining two members of ``pool``, with the rest of the pool."""
    for i in range(len(pool)):
        for j in range(i + 1, len(pool)):
            rest = pool[:i] + pool[i + 1 : j] + pool[j + 1 :]
            a, b = pool[i], pool[j]
            va, vb = _value(a), _value(b)
            yield ("+", a, b), rest
            yield ("*", a, b), rest
            if va >= vb:
                yield ("-", a, b), rest
            if vb > va:
                yield ("-", b, a), rest


@lru_cache(maxsize=4096)
def solutions(numbers: tuple[int, ...]) -> dict[int, dict[str, Tree]]:
    """All full-use expressions of sorted ``numbers``: value -> {strategy label: one tree}."""
    found: dict[int, dict[str, Tree]] = {}

    def search(pool: tuple[Tree, ...]) -> None:
        if len(pool) == 1:
            found.setdefault(_value(pool[0]), {}).setdefault(canonical(pool[0]), pool[0])
            return
        for tree, rest in _combine(pool):
            search(rest + (tree,))

    search(tuple(numbers))
    return found


def render(tree: Tree, rng: random.Random) -> str:
    """A step chain for ``tree``; operand order of commutative steps is randomised."""
    steps: list[str] = []

    def walk(node: Tree) -> int:
        if isinstance(node, int):
            return node
        op, left, right = node
        a, b = walk(left), walk(right)
        value = _tree_step(op, a, b)
        if op in "+*" and rng.random() < 0.5:
            a, b = b, a
        steps.append(f"{a}{op}{b}={value}")
        return value

    walk(tree)
    return ",".join(steps)


def random_attempt(numbers: tuple[int, ...], rng: random.Random) -> Tree:
    """A uniformly chosen chain of legal steps: usually misses the target (a near-miss)."""
    pool: tuple[Tree, ...] = tuple(numbers)
    while len(pool) > 1:
        pool_options = list(_combine(pool))
        tree, rest = pool_options[rng.randrange(len(pool_options))]
        pool = rest + (tree,)
    return pool[0]


@dataclass
class Countdown:
    """Countdown over ``size`` numbers drawn from ``low..high``; OOD uses ``ood_size``/``ood_high``."""

    name: str = "countdown"
    size: int = 3
    low: int = 1
    high: int = 9
    max_target: int = 99
    ood_size: int = 4
    ood_high: int = 12
    ood_max_target: int = 199
    min_strategies: int = 3

    def _spec(self, split: str) -> tuple[int, int, int]:
        if split == "ood":
            return self.ood_size, self.ood_high, self.ood_max_target
        return self.size, self.high, self.max_target

    def in_split(self, numbers: tuple[int, ...], target: int, split: str) -> bool:
        held_out = stable_bucket(f"{self.name}|{sorted(numbers)}|{target}") == 0
        return held_out == (split in ("test", "ood"))

    def make_problem(self, numbers: tuple[int, ...], target: int, split: str, index: int) -> Problem:
        return Problem(
            id=f"{self.name}/{split}/{index}",
            prompt=f"Make {target} from {' '.join(map(str, numbers))}.\n",
            answer=str(target),
            meta={"numbers": list(numbers), "target": target},
        )

    def prompts(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        check_split(split)
        size, high, max_target = self._spec(split)
        rng = random.Random(f"{self.name}|{split}|{seed}")
        problems: list[Problem] = []
        while len(problems) < n:
            numbers = tuple(rng.randint(self.low, high) for _ in range(size))
            by_value = solutions(tuple(sorted(numbers)))
            targets = sorted(
                t
                for t, strategies in by_value.items()
                if 1 <= t <= max_target and len(strategies) >= self.min_strategies and self.in_split(numbers, t, split)
            )
            if targets:
                problems.append(self.make_problem(numbers, rng.choice(targets), split, len(problems)))
        return problems

    def score(self, problem: Problem, completion: str) -> Score:
        try:
            return self._score(problem, completion)
        except (ValueError, KeyError, TypeError, OverflowError):
            return UNPARSED

    def _score(self, problem: Problem, completion: str) -> Score:
        text = completion.strip().split("\n", 1)[0].strip()
        if not text or len(text) > 200:
            return UNPARSED
        pool: list[tuple[int, Tree]] = [(v, v) for v in problem.meta["numbers"]]
        arithmetic_ok = True
        claimed = None
        for step in text.split(","):
            match = _STEP.fullmatch(step.strip())
            if match is None:
                return UNPARSED
            a, op, b, claimed = int(match[1]), match[2], int(match[3]), int(match[4])
            left, right = _take(pool, a), _take(pool, b)
            if left is None or right is None:
                return UNPARSED
            arithmetic_ok &= _apply(op, a, b) == claimed
            pool.append((claimed, (op, left, right)))
        if len(pool) != 1:
            return Score(0.0, str(claimed), None, parsed=True)
        strategy = canonical(pool[0][1])
        correct = arithmetic_ok and claimed == problem.meta["target"]
        return Score(float(correct), str(claimed), strategy, parsed=True)

    def demonstration(self, problem: Problem, rng: random.Random, solve_prob: float) -> str:
        """A pretraining completion: a uniformly chosen correct strategy with probability
        ``solve_prob``, otherwise a random legal attempt (a near-miss that is usually wrong)."""
        numbers = tuple(problem.meta["numbers"])
        if rng.random() < solve_prob:
            by_label = solutions(tuple(sorted(numbers)))[problem.meta["target"]]
            tree = by_label[rng.choice(sorted(by_label))]
        else:
            tree = random_attempt(numbers, rng)
        return render(tree, rng)


def _take(pool: list[tuple[int, Tree]], value: int) -> Tree | None:
    """Remove the most recent pool entry with ``value`` and return its tree."""
    for i in range(len(pool) - 1, -1, -1):
        if pool[i][0] == value:
            return pool.pop(i)[1]
    return None
