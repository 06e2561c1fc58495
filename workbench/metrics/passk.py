"""pass@k: the unbiased estimator of Chen et al. (2021)."""

from __future__ import annotations

from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of ``k`` samples drawn without replacement from ``n``
    samples with ``c`` correct is correct: 1 - C(n-c, k)/C(n, k), as a stable product."""
    if not 0 <= c <= n:
        raise ValueError(f"c={c} correct out of n={n} samples: need 0 <= c <= n")
    if not 1 <= k <= n:
        raise ValueError(f"k={k}: need 1 <= k <= n={n}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def mean_pass_at_k(correct_counts: Sequence[int], n: int, ks: Sequence[int]) -> dict[int, float]:
    """pass@k averaged over prompts, each with ``n`` samples of which ``correct_counts[i]`` are right."""
    return {k: sum(pass_at_k(n, c, k) for c in correct_counts) / len(correct_counts) for k in ks if k <= n}


def pass_at_k_grid(n: int) -> list[int]:
    """k = 1, 2, 4, ... up to n, and n itself: the points of a pass@k curve from n samples."""
    if n < 1:
        raise ValueError(f"n={n!r} must be an integer >= 1")
    grid = [1 << i for i in range(n.bit_length()) if 1 << i <= n]
    return grid if grid[-1] == n else grid + [n]
