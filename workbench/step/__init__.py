"""The training step, written once: its data (``batch.RolloutBatch``, ``events.Phase``), what a method
sees of the engine running it (``context.StepContext``) and the functions every engine calls
(``stages``: sampling, scoring, the loss, the metrics row), re-exported here as ``workbench.step.X``."""

from workbench.step.context import StepContext
from workbench.step.stages import (
    BatchShare,
    MicroBatchLoss,
    ScoresTokens,
    apply_scores,
    finish_rollouts,
    loss_mask,
    metrics_row,
    policy_loss,
    sample_group,
    score,
    token_logprobs,
    update_numbers,
)

__all__ = [
    "BatchShare",
    "MicroBatchLoss",
    "ScoresTokens",
    "StepContext",
    "apply_scores",
    "finish_rollouts",
    "loss_mask",
    "metrics_row",
    "policy_loss",
    "sample_group",
    "score",
    "token_logprobs",
    "update_numbers",
]
