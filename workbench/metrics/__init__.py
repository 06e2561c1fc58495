"""Telemetry: entropy statistics, critical decision pivots, diversity and pass@k (pure functions; the
experiments that sample, evaluation and pivot sensitivity, are in ``workbench.engine.evaluation``), and
``registry``, the one list of the metrics the workbench records."""

from workbench.metrics import registry
from workbench.metrics.diversity import (
    distinct,
    distinct_n,
    group_diversity,
    pairwise_similarity,
    self_bleu,
    strategy_count,
    unique_answers,
)
from workbench.metrics.entropy import entropy_stats, fit_reward_entropy
from workbench.metrics.passk import mean_pass_at_k, pass_at_k, pass_at_k_grid
from workbench.metrics.pivots import find_pivots, group_zscore, pivot_stats
from workbench.metrics.registry import Metric
from workbench.metrics.rollout import frac_reward_zero_std, rollout_metrics

__all__ = [
    "Metric",
    "distinct",
    "distinct_n",
    "entropy_stats",
    "find_pivots",
    "fit_reward_entropy",
    "frac_reward_zero_std",
    "group_diversity",
    "group_zscore",
    "mean_pass_at_k",
    "pairwise_similarity",
    "pass_at_k",
    "pass_at_k_grid",
    "pivot_stats",
    "registry",
    "rollout_metrics",
    "self_bleu",
    "strategy_count",
    "unique_answers",
]
