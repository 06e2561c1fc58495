"""ERPO (arXiv 2603.28204): entropy-gated, progress-modulated token advantages.

GRPO's sequence advantage A_i is reshaped per token, most strongly at the high-entropy
tokens where a response could have gone another way (critical decision pivots):

    z_{i,t}  = (H_{i,t} - mu_G) / (sigma_G + 1e-6)      over all valid tokens of the group
    W_{i,t}  = sigmoid(gamma z_{i,t})                    (the gate; gamma 5)
    s_{i,t}  = logp_old - logp_ref                       (progress, in nats; detached)
    s~_{i,t} = z-score of s within its relative-position bucket over the group:
               tau = t / |o_i|, bucket = min(floor(tau K), K - 1), K 10; a bucket whose
               std is below ``noise_floor`` nats gives 0 (rounding, not progress): by default
               the precision's rounding noise of s (``NOISE_FLOOR``)
    Psi      = W sgn(A_i) s~, with sgn(0) = 0
    additive:     A_{i,t} = A_i + eta Psi                                      (eta 0.2, default)
    redistribute: A_{i,t} = A_i |o_i| W_{i,t} / sum_s W_{i,s} + eta sgn(A_i) s~

Both log-probs come from one numerical path: the scoring pass (``ctx.token_logprobs``)
with the adapter on and off, in the same dtype. The sampler's log-probs would not do: under
bfloat16 its KV-cached decode and the scoring pass round differently by up to ~3e-3 nats, and the
z-score turns that noise into O(1) advantages. On one path, s is exactly 0 at step 0 (LoRA's B
is 0, so the adapter adds exact zeros), and ERPO's advantages are GRPO's, on a GPU as on a CPU.
That costs one no-grad pass of the policy besides the reference pass (stored in
``batch.ref_logprobs``, which the trainer's KL term reuses).

The paper scales s by a coefficient beta (0.1). The bucket z-score divides any scale out, so
beta changed nothing (0.1 and 1.0 agreed to 1.6e-4 in the audit of issue 22); it is not an option here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from workbench.methods.base import Method
from workbench.metrics.pivots import group_zscore
from workbench.options import choice, integer, number

VARIANTS = ("additive", "redistribute")
# nats: the rounding noise of s by the precision the run trains in (a bucket spread below it is not
# progress). float32: ~1e-6. Half precision, the base stored in it, measured with an adapter moved
# by N(0, 1e-3) (bench/precision.py): the std of s(bf16) - s(float32) was 1.1e-2 on the embedded
# model and 6.8e-2 on SmolLM2-135M, against a real spread of s of 1.9e-3 and 7.2e-3 there; float16
# (not measured) keeps 3 more mantissa bits, about 8x less.
NOISE_FLOOR = {"float32": 1e-6, "bfloat16": 1e-2, "float16": 1e-3}


def entropy_gate(entropy: Tensor, mask: Tensor, gamma: float = 5.0, group: Tensor | None = None) -> Tensor:
    """W = sigmoid(gamma z) [N, T], z the entropy z-scored over the valid tokens of each group
    (``group`` [N]; default: all rows are one group); 0 on padding."""
    group = torch.zeros(entropy.shape[0], dtype=torch.long, device=entropy.device) if group is None else group
    z = group_zscore(entropy, mask, group.to(entropy.device))
    return torch.sigmoid(gamma * z) * mask.bool()


def position_buckets(mask: Tensor, num_buckets: int = 10) -> Tensor:
    """Bucket of each token [N, T]: min(floor(t / |o_i| K), K - 1), in integers so that
    t / |o_i| = k / K lands in bucket k exactly."""
    if num_buckets < 1:
        raise ValueError(f"num_buckets={num_buckets!r} must be an integer >= 1")
    lengths = mask.bool().sum(-1, keepdim=True).clamp(min=1)
    t = torch.arange(mask.shape[-1], device=mask.device)[None, :]
    return torch.div(t * num_buckets, lengths, rounding_mode="floor").clamp(max=num_buckets - 1)


def bucket_normalize(
    signal: Tensor,
    mask: Tensor,
    num_buckets: int = 10,
    group: Tensor | None = None,
    floor: float = NOISE_FLOOR["float32"],
) -> Tensor:
    """z-score of ``signal`` [N, T] within each (group, position bucket) over its valid tokens.

    A bucket whose (population) std is below ``floor`` gives 0; padding gives 0.
    """
    valid = mask.bool()
    group = torch.zeros(signal.shape[0], dtype=torch.long, device=signal.device) if group is None else group
    keys = (group.to(signal.device).long()[:, None] * num_buckets + position_buckets(mask, num_buckets))[valid]
    values = signal[valid].double()
    if values.numel() == 0:
        return torch.zeros_like(signal, dtype=torch.float32)
    # segment statistics of every (group, bucket) at once; two passes for a stable variance
    size = int(keys.max()) + 1
    count = torch.zeros(size, dtype=torch.float64, device=signal.device).index_add_(0, keys, torch.ones_like(values))
    mean = torch.zeros_like(count).index_add_(0, keys, values) / count.clamp(min=1)
    centred = values - mean[keys]
    std = (torch.zeros_like(count).index_add_(0, keys, centred**2) / count.clamp(min=1)).sqrt()
    z = torch.where(std[keys] < floor, torch.zeros_like(centred), centred / (std[keys] + 1e-6))
    out = torch.zeros_like(signal, dtype=torch.float32)
    out[valid] = z.float()
    return out


def modulation(adv: Tensor, gate: Tensor, progress: Tensor) -> Tensor:
    """Psi = W sgn(A) s~ [N, T] (torch.sign gives sgn(0) = 0)."""
    return gate * torch.sign(adv)[:, None] * progress


def token_advantages(
    adv: Tensor, gate: Tensor, progress: Tensor, mask: Tensor, eta: float = 0.2, variant: str = "additive"
) -> Tensor:
    """Final token advantages [N, T] from the sequence advantages ``adv`` [N], the gate W and the
    bucket-normalised progress s~ [N, T]; 0 on padding.

    additive: A + eta Psi; redistribute: A |o| W / sum_s W + eta sgn(A) s~.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not allowed; use one of {', '.join(VARIANTS)}")
    m = mask.to(gate.dtype)
    A = adv.to(gate.dtype)
    if variant == "additive":
        shaped = A[:, None] + eta * modulation(A, gate, progress)
    else:
        w = gate * m
        lengths = m.sum(-1, keepdim=True)
        total = w.sum(-1, keepdim=True)
        # a row whose gates sum to 0 (no valid tokens) has no advantage to spread
        share = torch.where(total > 0, lengths * w / total.clamp(min=torch.finfo(w.dtype).tiny), torch.zeros_like(w))
        shaped = A[:, None] * share + eta * torch.sign(A)[:, None] * progress
    return shaped * m


class ERPO(Method):
    name = "erpo"
    OPTIONS = {
        "gamma": number(5.0, "gate sharpness on the group-z-scored entropy", low=0.0),
        "noise_floor": number(
            None,
            "nats: a position bucket whose std of logp_old - logp_ref is below this gives 0 (rounding, not progress)",
            low=0.0,
            optional=True,
            none_means="the precision's rounding noise: " + ", ".join(f"{k} {v:g}" for k, v in NOISE_FLOOR.items()),
        ),
        "eta": number(0.2, "weight of Psi in the token advantage", low=0.0),
        "num_buckets": integer(10, "K relative-position buckets for normalising s", low=1),
        "variant": choice(
            "additive", "additive: A + eta Psi; redistribute: A spread over tokens by the gate", VARIANTS
        ),
    }

    @property
    def noise_floor(self) -> float:
        """The option, or the rounding noise of the precision the run trains in ("auto" not yet
        chosen by an engine: float32's, as on a CPU)."""
        chosen = self.options["noise_floor"]
        return NOISE_FLOOR.get(self.cfg.dtype, NOISE_FLOOR["float32"]) if chosen is None else chosen

    def advantages(self, ctx, batch):
        numbers = super().advantages(ctx, batch)
        o, mask = self.options, batch.mask
        # both from the scoring pass, in one dtype: s is what the adapter changed, not rounding
        old = ctx.token_logprobs(batch.prompt_ids, batch.ids, adapter="policy")[0].to(batch.logprobs.device)
        ref = ctx.token_logprobs(batch.prompt_ids, batch.ids, adapter="reference")[0].to(batch.logprobs.device)
        progress = (old - ref) * mask  # [N, T] nats
        normalized = bucket_normalize(progress, mask, o["num_buckets"], batch.group, self.noise_floor)
        gate = entropy_gate(batch.entropy, mask, o["gamma"], group=batch.group)
        batch.gate = gate
        batch.token_advantages = token_advantages(batch.advantages, gate, normalized, mask, o["eta"], o["variant"])
        batch.ref_logprobs = ref
        batch.extras["erpo_progress"] = progress
        batch.extras["erpo_progress_normalized"] = normalized
        valid = mask.bool()
        psi = modulation(batch.advantages.to(gate.dtype), gate, normalized)
        batch.step_numbers["erpo"] = advantage_numbers = {
            "erpo_gate_mean": float(gate[valid].mean()),
            "erpo_psi_abs_mean": float(psi[valid].abs().mean()),
            "erpo_progress_abs_mean": float(progress[valid].abs().mean()),
            "erpo_token_advantage_abs_mean": float(batch.token_advantages[valid].abs().mean()),
        }
        return {**numbers, **advantage_numbers}

    def extra_metrics(self, ctx, batch):
        valid = batch.mask.bool()
        at_pivots, elsewhere = valid & batch.pivots, valid & ~batch.pivots
        return {
            **batch.step_numbers["erpo"],
            # the gate should open at pivots and stay shut elsewhere
            "erpo_gate_at_pivots": float(batch.gate[at_pivots].mean()) if at_pivots.any() else float("nan"),
            "erpo_gate_elsewhere": float(batch.gate[elsewhere].mean()) if elsewhere.any() else float("nan"),
        }
