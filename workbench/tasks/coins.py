"""Coins: pay an amount exactly with the given coin values.

``Pay 12 with 2 5.`` -> ``5+5=10,10+2=12``: a chain of running sums, each step adding one
coin, so a character-level model never has to add more than two numbers at once. The
strategy is the multiset of coins used (``2+5+5``), so "few big coins" and "many small
coins" are different strategies of one problem. A payment uses at least two coins. Splits
work as in countdown: a stable hash puts 20% of (coins, amount) pairs in ``test``; ``ood``
uses more coin values and larger amounts.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache

from workbench.tasks.base import UNPARSED, Problem, Score, check_split, stable_bucket

_STEP = re.compile(r"(\d{1,6})\+(\d{1,4})=(\d{1,6})")


def valid_payments(coins: tuple[int, ...], amount: int, max_coins: int) -> tuple[tuple[int, ...], ...]:
    """Payments of at least two coins (the chain format needs one addition)."""
    return tuple(p for p in payments(coins, amount, max_coins) if len(p) >= 2)


@lru_cache(maxsize=4096)
def payments(coins: tuple[int, ...], amount: int, max_coins: int) -> tuple[tuple[int, ...], ...]:
    """Every multiset (sorted descending) of at most ``max_coins`` coins summing to ``amount``."""
    if amount == 0:
        return ((),)
    if not coins or max_coins == 0:
        return ()
    largest, rest = coins[0], coins[1:]
    found = []
    for count in range(min(amount // largest, max_coins), -1, -1):
        for tail in payments(rest, amount - count * largest, max_coins - count):
            found.append((largest,) * count + tail)
    return tuple(found)


@dataclass
class Coins:
    name: str = "coins"
    num_coins: int = 2
    high: int = 9
    min_amount: int = 5
    max_amount: int = 30
    ood_num_coins: int = 3
    ood_high: int = 12
    ood_min_amount: int = 31
    ood_max_amount: int = 60
    max_coins: int = 4
    ood_max_coins: int = 6
    min_strategies: int = 2

    def prompts(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        check_split(split)
        ood = split == "ood"
        k = self.ood_num_coins if ood else self.num_coins
        high = self.ood_high if ood else self.high
        lo, hi = (self.ood_min_amount, self.ood_max_amount) if ood else (self.min_amount, self.max_amount)
        max_coins = self.ood_max_coins if ood else self.max_coins
        rng = random.Random(f"{self.name}|{split}|{seed}")
        problems: list[Problem] = []
        while len(problems) < n:
            coins = tuple(sorted(rng.sample(range(1, high + 1), k), reverse=True))
            amounts = [
                a
                for a in range(lo, hi + 1)
                if len(valid_payments(coins, a, max_coins)) >= self.min_strategies
                and (ood or (stable_bucket(f"{self.name}|{coins}|{a}") == 0) == (split == "test"))
            ]
            if amounts:
                amount = rng.choice(amounts)
                shown = list(coins)
                rng.shuffle(shown)
                problems.append(
                    Problem(
                        id=f"{self.name}/{split}/{len(problems)}",
                        prompt=f"Pay {amount} with {' '.join(map(str, shown))}.\n",
                        answer=str(amount),
                        meta={"coins": sorted(coins, reverse=True), "amount": amount, "max_coins": max_coins},
                    )
                )
        return problems

    def score(self, problem: Problem, completion: str) -> Score:
        text = completion.strip().split("\n", 1)[0].strip()
        if not text or len(text) > 200:
            return UNPARSED
        coins = problem.meta["coins"]
        used: list[int] = []
        total, arithmetic_ok = None, True
        for i, step in enumerate(text.split(",")):
            match = _STEP.fullmatch(step.strip())
            if match is None:
                return UNPARSED
            a, b, claimed = int(match[1]), int(match[2]), int(match[3])
            if b not in coins or (i == 0 and a not in coins) or (i > 0 and a != total):
                return UNPARSED
            used += [a, b] if i == 0 else [b]
            arithmetic_ok &= a + b == claimed
            total = claimed
        strategy = "+".join(map(str, sorted(used)))
        correct = arithmetic_ok and total == problem.meta["amount"]
        return Score(float(correct), str(total), strategy, parsed=True)

    def demonstration(self, problem: Problem, rng: random.Random, solve_prob: float) -> str:
        """A correct payment (uniform over strategies) with probability ``solve_prob``, else
        a random handful of coins that usually misses the amount."""
        coins = tuple(problem.meta["coins"])
        max_coins = problem.meta.get("max_coins", self.max_coins)
        if rng.random() < solve_prob:
            used = list(rng.choice(valid_payments(coins, problem.meta["amount"], max_coins)))
        else:
            used = [rng.choice(coins) for _ in range(rng.randint(2, max_coins))]
        rng.shuffle(used)
        steps, total = [], used[0]
        for coin in used[1:]:
            steps.append(f"{total}+{coin}={total + coin}")
            total += coin
        return ",".join(steps)
