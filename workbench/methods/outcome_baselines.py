"""Two exploration baselines that change only the advantages, from the outcome of each response
(docs/methods.md): W-REINFORCE, negative sample reinforcement (Zhu et al. 2025), and Pass@k
Training (Chen et al. 2025). The formulas are pure functions in ``workbench.core``."""

from __future__ import annotations

from workbench import core, tasks
from workbench.methods.grpo import GRPO
from workbench.metrics import registry as M
from workbench.options import ConfigError, MethodOptions, integer, number


class WReinforce(GRPO):
    """A = lambda r for a correct response, r - 1 for an incorrect one; no group baseline."""

    name = "w_reinforce"
    OPTIONS = {
        "positive_weight": number(
            0.1, "lambda: the weight of the correct responses' part (1: REINFORCE, 0: only negatives)", low=0.0
        ),
    }

    def advantages(self, ctx, batch):
        rewards = batch.scored_rewards
        batch.advantages = core.negative_reinforce_advantages(
            rewards, tasks.is_success(rewards), self.options["positive_weight"]
        )
        batch.token_advantages = batch.advantages[:, None] * batch.mask
        return {"advantage_abs_mean": float(batch.advantages.abs().mean())}

    def extra_metrics(self, ctx, batch):
        negative = batch.advantages < 0
        return {M.W_REINFORCE_NEGATIVE_FRACTION: float(negative.float().mean())}


class PasskTraining(GRPO):
    """Each group's analytic pass@k advantages (correct: reward >= 0.5)."""

    name = "passk_training"
    OPTIONS = {"k": integer(4, "the k of the pass@k each group is rewarded by (below num_generations)", low=1)}

    @classmethod
    def validate(cls, cfg) -> None:
        """k below the group size: at k = num_generations every group's pass@k is 1 or 0, and every
        advantage 0."""
        super().validate(cfg)
        k = MethodOptions(cfg.method_options, cls.OPTIONS)["k"]
        if k >= cfg.num_generations:
            raise ConfigError(
                "method_options.k",
                k,
                f"an integer from 1 to num_generations - 1 = {cfg.num_generations - 1} (at k = num_generations "
                "a group's pass@k is 1 or 0 and every advantage 0)",
            )

    def advantages(self, ctx, batch):
        correct = batch.grouped(tasks.is_success(batch.scored_rewards))
        advantages = core.passk_advantages(correct, self.options["k"])
        batch.advantages = batch.ungrouped(advantages).to(batch.mask.device)
        batch.token_advantages = batch.advantages[:, None] * batch.mask
        return {"advantage_abs_mean": float(batch.advantages.abs().mean())}

    def extra_metrics(self, ctx, batch):
        correct = batch.grouped(tasks.is_success(batch.scored_rewards))
        return {M.PASSK_GROUP_MEAN: float(core.group_pass_at_k(correct, self.options["k"]).mean())}
