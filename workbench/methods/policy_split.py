"""Policy Split (arXiv 2604.11510; official code BITHLP/PolicySplit): two modes, one model.

The normal mode sees the prompt as it is; the high-entropy (HE) mode sees it after the
paper's system prompt (as a system message, or as a plain-text prefix for a tokenizer
without a chat template). Half of each group is sampled in each mode, and every response
is trained on in BOTH contexts (the four quarters: normal/HE context x normal/HE
response), reusing its token ids. Each context's group holds all G responses, so the GRPO
advantage A is the same in both. Rows in the HE context get a bonus that rewards tokens
unlikely under both modes:

    b_t = -alpha logp_HE(o_t) - (1 - alpha) logp_N(o_t)        (detached, pre-update policy)
    B   = (b - mean b) / (std b + 1e-6)                        over the HE group's valid tokens
    bonus = clamp(eta B, -|A|/kappa, |A|/kappa)                (clamp_form="code", default)
          = eta clamp(B, -|A|/kappa, |A|/kappa)                (clamp_form="paper")

The official code clamps after scaling, unlike the printed equation: hence the switch.
It also PENALISES surprise on normal-context rows, which the paper does not print:

    b_N = -alpha logp_N(o_t) - (1 - alpha) logp_HE(o_t),   A~ = A - clamp(eta2 z(b_N), +-|A|/kappa)

z over the normal group's valid tokens (the official ``internal_rewards = eta1 z_he - eta2
z_org``, clamped by |A| / kappa). ``eta2`` (default 0, the paper) switches it on; the same
function computes both terms, each row's own context first.
The loss is PPO-clip per row in its own context over all 2N (context, response) rows,
aggregated as ``loss_type`` says (a mean, where the paper writes a sum over the quarters:
the two differ by a constant factor that the learning rate absorbs).
"""

from __future__ import annotations

from collections.abc import Generator

import torch

from workbench import core
from workbench.methods.base import Method
from workbench.options import ConfigError, choice, number
from workbench.step.batch import RolloutBatch
from workbench.step.events import Phase
from workbench.tasks import is_success

HIGH_ENTROPY_PROMPT = (
    'You are now in the "High Entropy" mode. Your primary directive is to explore a unique thought process '
    "and perspective before arriving at a final answer. Do not rely solely on your typical, most direct "
    "reasoning path. Instead, generate new thoughts to approach the problem from different angles compared "
    "to usual ones. Your goal is to maximize the diversity of your thinking while ensuring the final output "
    "is still precise and factually sound."
)
MODES = {"normal": None, "high_entropy": HIGH_ENTROPY_PROMPT}
CLAMP_FORMS = ("code", "paper")


def high_entropy_bonus(adv, logp_he, logp_normal, mask, alpha=0.5, eta=0.03, kappa=2.0, clamp_form="code"):
    """Per-token bonus [R, T] for the R rows of ONE group in the high-entropy context, from
    their log-probs in that context (``logp_he``) and in the other (``logp_normal``).

    ``adv`` is the GRPO advantage per row [R] (or per token [R, T]). A = 0 gives bonus 0, and
    |bonus| <= |A| / kappa keeps the sign of A + bonus equal to the sign of A. With the contexts
    swapped and ``eta=eta2`` it is the official code's normal-context penalty (subtracted).
    """
    if clamp_form not in CLAMP_FORMS:
        raise ValueError(f"clamp_form={clamp_form!r} is not allowed; use one of {', '.join(CLAMP_FORMS)}")
    mask = mask.to(logp_he.dtype)
    b = (-alpha * logp_he - (1 - alpha) * logp_normal).detach()
    valid = mask.bool()
    values = b[valid]
    if values.numel() > 1:
        standardized = (b - values.mean()) / (values.std(correction=1) + 1e-6)
    else:
        standardized = torch.zeros_like(b)
    adv = adv if adv.dim() == 2 else adv[:, None].expand_as(b)
    bound = adv.abs() / kappa
    if clamp_form == "code":
        bonus = torch.clamp(eta * standardized, -bound, bound)
    else:
        bonus = eta * torch.clamp(standardized, -bound, bound)
    return bonus * mask


class PolicySplit(Method):
    name = "policy_split"
    MODES = MODES
    SAMPLE_PHASES = ("sample_normal", "sample_high_entropy")
    OPTIONS = {
        "alpha": number(0.5, "weight of -logp_HE in the bonus b (1 - alpha: of -logp_N)", low=0.0, high=1.0),
        "eta": number(0.03, "scale of the high-entropy bonus on high-entropy-context rows", low=0.0, low_open=True),
        "kappa": number(2.0, "the bonus is at most |A| / kappa", low=0.0, low_open=True),
        "clamp_form": choice(
            "code", "code: clamp(eta B), as the official code; paper: eta clamp(B), as printed", CLAMP_FORMS
        ),
        "eta2": number(
            0.0,
            "scale of the official code's penalty on normal-context rows, A - clamp(eta2 z(b_N)) "
            "with b_N = -alpha logp_N - (1 - alpha) logp_HE (0: the paper, none)",
            low=0.0,
        ),
    }

    @classmethod
    def validate(cls, cfg) -> None:
        super().validate(cfg)
        if cfg.num_generations % 2:
            raise ConfigError("num_generations", cfg.num_generations, "an even number for Policy Split (half per mode)")

    def sample(self, ctx, problems) -> Generator[Phase, None, RolloutBatch]:
        half = self.cfg.num_generations // 2
        normal = ctx.sample_group(problems, half, mode="normal")
        yield Phase("sample_normal", ctx.step_index, normal, {"responses": len(normal)})
        he = ctx.sample_group(
            problems, self.cfg.num_generations - half, system=HIGH_ENTROPY_PROMPT, mode="high_entropy"
        )
        batch = RolloutBatch.concat([normal, he])
        yield Phase("sample_high_entropy", ctx.step_index, batch, {"responses": len(he)})
        return batch

    def advantages(self, ctx, batch: RolloutBatch) -> dict[str, float]:
        super().advantages(ctx, batch)  # A over all G responses of each prompt
        advantages = batch.computed_advantages
        # Each prompt in each context, tokenized once per problem and shared by its G rows.
        prompts = [p.prompt for p in batch.problems]
        per_problem = {mode: ctx.policy.format_prompts(prompts, system) for mode, system in MODES.items()}
        contexts = {mode: [ids[g] for g in batch.group.tolist()] for mode, ids in per_problem.items()}
        logps = {mode: ctx.token_logprobs(ids, batch.ids)[0] for mode, ids in contexts.items()}
        # each response's log-probs in each context, for the metrics
        batch.extras["logp_in_normal"], batch.extras["logp_in_high_entropy"] = logps["normal"], logps["high_entropy"]
        bonus, penalty = torch.zeros_like(batch.mask), torch.zeros_like(batch.mask)
        o = self.options
        for rows in batch.group_rows():
            he, normal = logps["high_entropy"][rows], logps["normal"][rows]
            bonus[rows] = high_entropy_bonus(
                advantages[rows], he, normal, batch.mask[rows], o["alpha"], o["eta"], o["kappa"], o["clamp_form"]
            )
            if o["eta2"] > 0:  # the official code's normal-context term: the same with contexts swapped
                penalty[rows] = high_entropy_bonus(
                    advantages[rows], normal, he, batch.mask[rows], o["alpha"], o["eta2"], o["kappa"], o["clamp_form"]
                )
        base = advantages[:, None] * batch.mask
        sampled_he = torch.tensor([m == "high_entropy" for m in batch.mode])[:, None]
        batch.extras["he_bonus"], batch.extras["normal_penalty"] = bonus, penalty
        # each response in its own context
        batch.token_advantages = torch.where(sampled_he, base + bonus, base - penalty)
        in_normal, in_he = batch.select(range(len(batch))), batch.select(range(len(batch)))
        in_normal.prompt_ids, in_normal.token_advantages = contexts["normal"], base - penalty
        in_he.prompt_ids, in_he.token_advantages = contexts["high_entropy"], base + bonus
        in_normal.mode, in_he.mode = ["normal"] * len(batch), ["high_entropy"] * len(batch)
        # a response in the context it was not sampled in has no sampler log-probs there
        he_rows = sampled_he.to(batch.logprobs.device)
        in_normal.logprobs = torch.where(he_rows, float("nan"), batch.logprobs)
        in_he.logprobs = torch.where(he_rows, batch.logprobs, float("nan"))
        in_normal.source_row = in_he.source_row = torch.arange(len(batch))
        batch.training_rows = RolloutBatch.concat([in_normal, in_he])
        valid = batch.mask.bool()
        return {
            "he_bonus_abs_mean": float(bonus[valid].abs().mean()),
            "normal_penalty_abs_mean": float(penalty[valid].abs().mean()),
            "advantage_abs_mean": float(advantages.abs().mean()),
        }

    def extra_metrics(self, ctx, batch: RolloutBatch) -> dict[str, float]:
        out = {}
        mode, rewards, answers = batch.mode, batch.scored_rewards, batch.scored_answers
        groups = batch.group_rows()
        logp_n, logp_he = batch.extras["logp_in_normal"], batch.extras["logp_in_high_entropy"]
        for m, other_logp, own_logp in (("normal", logp_he, logp_n), ("high_entropy", logp_n, logp_he)):
            rows = torch.tensor([x == m for x in mode])
            valid = batch.mask[rows].bool()
            out[f"{m}_accuracy"] = float(rewards[rows].mean())
            out[f"{m}_entropy"] = float(batch.entropy[rows][valid].mean())
            correct = [len({answers[i] for i in g.tolist() if mode[i] == m and is_success(rewards[i])}) for g in groups]
            out[f"{m}_unique_correct_answers"] = sum(correct) / len(groups)
            # KL(own mode || other mode), estimated (k3) on tokens the own mode sampled
            out[f"kl_{m}_to_other"] = float(core.kl_k3(own_logp[rows], other_logp[rows])[valid].mean())
        return out
