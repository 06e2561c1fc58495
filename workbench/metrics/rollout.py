"""The telemetry of one step's rollouts, whichever engine sampled them (the workbench's Trainer or
TRL's GRPOTrainer): rewards, entropy, length, diversity and pivots of a scored batch."""

from __future__ import annotations

from workbench import tasks
from workbench.metrics.diversity import group_diversity
from workbench.metrics.entropy import entropy_stats
from workbench.metrics.pivots import pivot_stats


def frac_reward_zero_std(rewards, groups: list[list[int]]) -> float:
    """The share of groups (row indices into ``rewards``) whose rewards are all equal: their
    advantages are zero, so they give no gradient (TRL's name)."""
    return sum(float(rewards[rows].max() == rewards[rows].min()) for rows in groups) / len(groups)


def rollout_metrics(batch) -> dict[str, float]:
    """Metrics of a scored ``RolloutBatch`` whose ``pivots`` are found (``find_pivots``)."""
    groups = [rows.tolist() for rows in batch.group_rows()]
    return {
        "reward_mean": float(batch.rewards.mean()),
        "reward_std": float(batch.rewards.std(correction=0)),
        "accuracy": float(tasks.is_success(batch.rewards).float().mean()),  # as evaluate() counts
        "frac_reward_zero_std": frac_reward_zero_std(batch.rewards, groups),
        "parsed_fraction": float(batch.parsed.float().mean()),
        **entropy_stats(batch.entropy, batch.mask),
        "response_length": float(batch.response_lengths().mean()),
        **group_diversity(groups, batch.answers, batch.strategies, batch.rewards.tolist()),
        **pivot_stats(batch.entropy, batch.mask, batch.pivots),
        # where the engine knows how each response ended (an imported log may not)
        **({"truncated_fraction": float((~batch.finished).float().mean())} if batch.finished is not None else {}),
    }
