"""Diversity of a group of responses: distinct answers and distinct strategies."""

from __future__ import annotations

from collections.abc import Sequence


def distinct(labels: Sequence[object]) -> int:
    """Number of distinct labels, ignoring None (unparsed responses)."""
    return len({x for x in labels if x is not None})


def group_diversity(groups: Sequence[Sequence[int]], answers, strategies, rewards) -> dict[str, float]:
    """Means over groups of unique answers, distinct strategies and distinct correct strategies."""
    unique_answers, strategies_n, correct_n = [], [], []
    for rows in groups:
        unique_answers.append(distinct([answers[i] for i in rows]))
        strategies_n.append(distinct([strategies[i] for i in rows]))
        correct_n.append(distinct([strategies[i] for i in rows if rewards[i] > 0.5]))
    n = max(1, len(groups))
    return {
        "unique_answers": sum(unique_answers) / n,
        "distinct_strategies": sum(strategies_n) / n,
        "distinct_correct_strategies": sum(correct_n) / n,
    }
