"""Telemetry: entropy statistics, critical decision pivots, diversity and pass@k."""

from .diversity import distinct, group_diversity
from .entropy import entropy_stats
from .passk import mean_pass_at_k, pass_at_k
from .pivots import find_pivots, group_zscore, pivot_stats

__all__ = [
    "distinct", "entropy_stats", "find_pivots", "group_diversity", "group_zscore",
    "mean_pass_at_k", "pass_at_k", "pivot_stats",
]
