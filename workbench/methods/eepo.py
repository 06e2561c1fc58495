"""EEPO (arXiv 2510.05837): sample-then-forget.

Per step: sample half of each group (stage 1); if the entropy gate is on, take ONE plain
SGD step on the LoRA adapter that lowers the probability of the stage-1 tokens (the
"unlearning" step); sample the other half from the moved adapter (stage 2); restore the
adapter bit for bit; run GRPO over the whole group.

The unlearning loss is the complementary loss L = mean_seq mean_tok -log(1 - min(p, 1-eps)).
Its gradient with respect to the target logit is +p (up to the clip): descent lowers the
dominant tokens most, where NLL ascent would act with weight 1 - p, i.e. mostly on tokens
that were already unlikely.

The clip, as the paper is transcribed, gives NO gradient to a token with p > 1 - eps: on the
embedded model at step 0 (the audit of issue 22) that is 58% of the stage-1 tokens and 70% of the unclipped gradient
mass (the format tokens, which are nearly deterministic). Whether the paper means to spare
them or it is a side effect is not known, so ``unlearn_clip`` offers both: "paper" (the clip,
default) and "none", -log(1 - p) unclipped, taken as a log-sum-exp over the other tokens
(``core.complement_logprobs``) so that it stays exact as p -> 1 and its gradient on the target
logit is exactly +p.

``unlearn_lr`` default 1.0, not the paper's 3e-3: that was set for full fine-tuning of 3B-8B
models. On a LoRA adapter the step moves only B at first (B starts at 0, so A gets no
gradient) and the change of the weights, scaling x dB x A, is tiny: after 20 GRPO steps on
the embedded model, 3e-3 gives a token KL(policy || rollout model) below 1e-4 nats, 0.3
gives 0.03, 1.0 gives 0.10 (stage 2 still parses 81% of the time and finds 1.8 strategies
per group that stage 1 missed), 3.0 gives 0.53 with stage 2 half unparsable. Measured by
``bench/eepo_lr.py``; the table is in docs/methods.md.

``unlearn_max_grad_norm`` default 0.3 clips the unlearning gradient (the paper takes the plain
step: None). The gradient grows as the policy sharpens and the adapter grows, from about 0.6
when the gate first opens on the embedded model to 2-3 after a few hundred steps; unclipped,
the step grew with it, stage 2 found almost no correct answer after about 150 steps, and
training on those rollouts pulled stage-1 accuracy from 0.6 down to 0.3 (500-step run in
docs/methods.md). Clipped at 0.3, the step moves the stage-1 tokens by 0.04-0.21 nats.
"""

from __future__ import annotations

from collections.abc import Generator

import torch

from workbench import core
from workbench.methods.base import Method
from workbench.metrics import distinct
from workbench.options import ConfigError, choice, integer, number
from workbench.step.batch import RolloutBatch
from workbench.step.events import Phase

GATES = ("entropy", "always", "never")
BEHAVIOUR = ("A", "B")
UNLEARN_CLIPS = ("paper", "none")


def unlearning_loss(logprobs: torch.Tensor, mask: torch.Tensor, eps: float = 0.01) -> torch.Tensor:
    """The paper's complementary loss over [sequences, tokens] log-probs: mean over sequences of
    the mean over their valid tokens of -log(1 - p_clip), p_clip = min(p, 1 - eps)."""
    p = logprobs.exp().clamp(max=1 - eps)
    return _sequence_mean(-torch.log1p(-p), mask)


def unclipped_unlearning_loss(complement: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The same loss without the clip, from log(1 - p) [sequences, tokens] as
    ``core.complement_logprobs`` gives it: mean over sequences of the mean of -log(1 - p)."""
    return _sequence_mean(-complement, mask)


def _sequence_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    per_sequence = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    has_tokens = mask.sum(-1) > 0
    return per_sequence[has_tokens].mean() if has_tokens.any() else per_sequence.sum() * 0


class EEPO(Method):
    name = "eepo"
    SAMPLE_PHASES = ("sample_stage1", "unlearn", "sample_stage2")
    OPTIONS = {
        "alpha": number(0.3, "gate threshold on the moving average of stage-1 entropy (nats)", low=0.0),
        "window": integer(3, "m: steps in the moving average, the current one included", low=1),
        "gate": choice("entropy", "when to unlearn: entropy (below alpha), always, never", GATES),
        "unlearn_lr": number(1.0, "plain SGD step size of the unlearning step on the adapter", low=0.0),
        "unlearn_max_grad_norm": number(
            0.3,
            "clip the unlearning gradient to this norm",
            low=0.0,
            low_open=True,
            optional=True,
            none_means="the paper's plain step",
        ),
        "unlearn_clip": choice(
            "paper",
            "paper: p clipped to 1 - eps in the complementary loss (no gradient above); "
            "none: -log(1 - p) unclipped, exact as p -> 1",
            UNLEARN_CLIPS,
        ),
        "eps": number(
            0.01,
            "p is clipped to 1 - eps in the complementary loss (unlearn_clip='paper')",
            low=0.0,
            high=1.0,
            low_open=True,
            high_open=True,
        ),
        "behaviour_logprobs": choice(
            "A", "old log-probs of stage-2 rows: A, each stage's sampling model; B, the restored policy", BEHAVIOUR
        ),
    }

    @classmethod
    def validate(cls, cfg) -> None:
        super().validate(cfg)
        if cfg.num_generations % 2:
            raise ConfigError("num_generations", cfg.num_generations, "an even number for EEPO (half per stage)")

    def gate(self, ctx, stage1_entropy: float) -> tuple[bool, list[float]]:
        """The gate and its window: this step's stage-1 entropy and the previous m-1 steps'
        (read from the history, so a resumed run gates exactly as an uninterrupted one)."""
        window_size = self.options["window"]
        previous = [h["eepo_stage1_entropy"] for h in ctx.records[-(window_size - 1) :]] if window_size > 1 else []
        window = previous + [stage1_entropy]
        mode = self.options["gate"]
        on = mode == "always" or (mode == "entropy" and sum(window) / len(window) < self.options["alpha"])
        return on, window

    def sample(self, ctx, problems) -> Generator[Phase, None, RolloutBatch]:
        half = self.cfg.num_generations // 2
        stage1 = ctx.sample_group(problems, half, stage=1)
        yield Phase("sample_stage1", ctx.step_index, stage1, {"responses": len(stage1)})
        entropy = float(stage1.entropy[stage1.mask.bool()].mean())
        on, window = self.gate(ctx, entropy)
        numbers = {
            "gate": on,
            "entropy_window": window,
            "stage1_entropy": entropy,
            "window_mean": sum(window) / len(window),
            "logp_drop": 0.0,
            "kl_policy_rollout": 0.0,
            "grad_norm": 0.0,
        }
        moved: dict[str, torch.Tensor] = {}  # no tensor moved: the rollout model is the policy itself
        kept: torch.Tensor | None = None
        if on:
            moved, kept, figures = self.unlearn(ctx, stage1)
            numbers.update(figures)
            numbers.update(self.unlearning_effect(ctx, stage1, moved))
        # The rollout model is the policy with its adapter tensors swapped for the moved ones:
        # nothing is written into the policy, so it is bit-for-bit itself again on exit.
        with ctx.policy.swapped_adapter(moved):
            yield Phase("unlearn", ctx.step_index, stage1, numbers)
            stage2 = ctx.sample_group(problems, self.cfg.num_generations - half, stage=2)
        batch = RolloutBatch.concat([stage1, stage2])
        batch.step_numbers["eepo_unlearn"] = numbers
        if kept is not None:  # the stage-1 rows come first
            batch.graph_logprobs = (
                torch.arange(kept.shape[0]),
                torch.nn.functional.pad(kept, (0, batch.ids.shape[1] - kept.shape[1])),
            )
        yield Phase("sample_stage2", ctx.step_index, batch, {"responses": len(stage2)})
        return batch

    def unlearn(self, ctx, stage1: RolloutBatch) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, dict]:
        """One plain SGD step with the complementary loss of the stage-1 tokens: (the moved adapter
        tensors by name, the stage-1 log-probs with their graph when the update can reuse them,
        the step's loss and gradient norm). The policy's own tensors are not written."""
        params = ctx.policy.trainable_parameters()
        unclipped = self.options["unlearn_clip"] == "none"
        logp, complement = ctx.token_logprobs(stage1.prompt_ids, stage1.ids, grad=True, with_complement=unclipped)
        loss = (
            unclipped_unlearning_loss(complement, stage1.mask)
            if unclipped
            else unlearning_loss(logp, stage1.mask, self.options["eps"])
        )
        # The update needs these same log-probs of the stage-1 rows (the policy has not moved by
        # then): keep the graph and hand it over instead of running the forward pass again.
        reuse = self.cfg.num_iterations == 1 and self.cfg.lora_dropout == 0
        grads = torch.autograd.grad(loss, list(params.values()), retain_graph=reuse)
        # The gradient grows as the policy sharpens and the adapter grows (about 0.6 when the gate
        # first opens on the embedded model, 2-3 after a few hundred steps), and so does the step.
        grad_norm = float(torch.nn.utils.get_total_norm(grads))
        clip = self.options["unlearn_max_grad_norm"]
        scale = min(1.0, clip / (grad_norm + 1e-6)) if clip is not None else 1.0
        lr = self.options["unlearn_lr"] * scale
        moved = {name: p.detach() - lr * g for (name, p), g in zip(params.items(), grads)}
        # grad_norm: before clipping
        return moved, logp if reuse else None, {"unlearning_loss": float(loss.detach()), "grad_norm": grad_norm}

    def unlearning_effect(self, ctx, stage1: RolloutBatch, moved: dict[str, torch.Tensor]) -> dict[str, float]:
        """How far the step moved the stage-1 tokens: mean log-prob drop and k3 KL(policy || rollout)."""
        after, _ = ctx.token_logprobs(stage1.prompt_ids, stage1.ids, adapter=moved)
        before = stage1.logprobs.float()  # the sampler's: the policy before the step
        valid = stage1.mask.bool()
        lengths = stage1.mask.sum(-1).clamp(min=1)
        return {
            # per stage-1 response (row order), its mean token log-prob before and after the step
            "logp_before": ((before * stage1.mask).sum(-1) / lengths).tolist(),
            "logp_after": ((after * stage1.mask).sum(-1) / lengths).tolist(),
            "logp_drop": float((before - after)[valid].mean()),
            # k3 estimate of KL(policy || rollout model) on tokens sampled from the policy
            "kl_policy_rollout": float(core.kl_k3(before, after)[valid].mean()),
        }

    def old_logprobs(self, batch: RolloutBatch, rows: torch.Tensor, recomputed: torch.Tensor) -> torch.Tensor:
        if self.options["behaviour_logprobs"] == "B":
            return recomputed
        stage2 = torch.tensor([batch.stage[i] == 2 for i in rows.tolist()], device=recomputed.device)
        return torch.where(stage2[:, None], batch.logprobs[rows].to(recomputed.dtype), recomputed)

    def extra_metrics(self, ctx, batch: RolloutBatch) -> dict[str, float]:
        u = batch.step_numbers["eepo_unlearn"]
        out = {
            "eepo_stage1_entropy": u["stage1_entropy"],
            "eepo_window_mean": u["window_mean"],
            "eepo_gate": float(u["gate"]),
            "eepo_logp_drop": u["logp_drop"],
            "eepo_kl_policy_rollout": u["kl_policy_rollout"],
            "eepo_unlearn_grad_norm": u["grad_norm"],
        }
        stage = torch.tensor(batch.stage)
        groups = batch.group_rows()
        rewards, strategies = batch.scored_rewards, batch.scored_strategies
        for s in (1, 2):
            rows = stage == s
            out[f"stage{s}_accuracy"] = float(rewards[rows].mean())
            out[f"stage{s}_entropy"] = float(batch.entropy[rows][batch.mask[rows].bool()].mean())
        overlap: dict[str, list[float]] = {"answers": [], "strategies": []}
        for key, labels in (("answers", batch.scored_answers), ("strategies", strategies)):
            per_stage: dict[int, list[int]] = {1: [], 2: []}
            for g in groups:
                sets = {s: {labels[i] for i in g.tolist() if batch.stage[i] == s} - {None} for s in (1, 2)}
                for s in (1, 2):
                    per_stage[s].append(len(sets[s]))
                union = sets[1] | sets[2]
                overlap[key].append(len(sets[1] & sets[2]) / len(union) if union else 0.0)
            for s in (1, 2):
                out[f"stage{s}_distinct_{key}"] = sum(per_stage[s]) / len(groups)
            out[f"stage_overlap_{key}"] = sum(overlap[key]) / len(groups)
        out["stage2_new_strategies"] = sum(
            distinct(
                [
                    strategies[i]
                    for i in g.tolist()
                    if batch.stage[i] == 2
                    and strategies[i] not in {strategies[j] for j in g.tolist() if batch.stage[j] == 1}
                ]
            )
            for g in groups
        ) / len(groups)
        return out
