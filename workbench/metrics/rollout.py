"""The telemetry of one step's rollouts, whichever engine sampled them (the workbench's Trainer or
TRL's GRPOTrainer): rewards, entropy, length, diversity and pivots of a scored batch."""

from __future__ import annotations

from workbench import tasks
from workbench.metrics.diversity import group_diversity
from workbench.metrics.entropy import entropy_stats
from workbench.metrics.pivots import pivot_stats


def rollout_metrics(batch) -> dict[str, float]:
    """Metrics of a scored ``RolloutBatch`` whose ``pivots`` are found (``find_pivots``)."""
    rewards = batch.grouped(batch.rewards)
    groups = [rows.tolist() for rows in batch.group_rows()]
    return {
        "reward_mean": float(batch.rewards.mean()),
        "reward_std": float(batch.rewards.std(correction=0)),
        "accuracy": float(tasks.is_success(batch.rewards).float().mean()),  # as evaluate() counts
        "frac_reward_zero_std": float((rewards.max(-1).values == rewards.min(-1).values).float().mean()),
        "parsed_fraction": float(batch.parsed.float().mean()),
        **entropy_stats(batch.entropy, batch.mask),
        "response_length": float(batch.response_lengths().mean()),
        **group_diversity(groups, batch.answers, batch.strategies, batch.rewards.tolist()),
        **pivot_stats(batch.entropy, batch.mask, batch.pivots),
    }
