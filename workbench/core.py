"""Shared tensor core of every method: advantages, log-probs, entropy, PPO-clip, aggregation, KL, masks.

Pure torch, no model or UI code. Response tensors are [B, T] with a ``mask`` [B, T]
(float or bool, 1 = valid response token). The formulas are those of docs/methods.md.
The chunked log-prob and entropy kernels live in :mod:`workbench.logprobs`; they are
re-exported here, so ``core`` stays the one namespace methods read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from workbench.logprobs import (
    complement_logprobs,
    compute_dtype,
    entropy_from_logprobs,
    logprobs_and_entropy,
    selective_log_softmax,
    token_entropy,
)

__all__ = [
    "group_advantages",
    "selective_log_softmax",
    "token_entropy",
    "entropy_from_logprobs",
    "logprobs_and_entropy",
    "complement_logprobs",
    "ppo_clip_token_loss",
    "aggregate_loss",
    "kl_k3",
    "masked_mean",
    "masked_quantiles",
    "top_entropy_mask",
    "entropy_advantage",
    "clip_cov_mask",
    "kl_cov_mask",
    "derive_seed",
]

SCALE_REWARDS = ("group", "batch", "none")
LOSS_TYPES = ("dapo", "grpo", "dr_grpo")


def derive_seed(seed: int, *parts: int) -> int:
    """The seed of one random stream of a run: (run seed, step, what the stream is for, ...)
    alone, never what ran before, so a resumed run draws exactly what it would have."""
    value = seed
    for p in parts:
        value = (value * 1_000_003 + p) % (2**63 - 1)
    return value


# --- advantages ---------------------------------------------------------------------------------
def group_advantages(rewards: Tensor, scale: str = "group", eps: float = 1e-4) -> Tensor:
    """A[p, g] = (r[p, g] - mean_g r[p]) / (std + eps).

    ``scale="group"``: std of the group (unbiased, as TRL); ``"batch"``: std of all rewards;
    ``"none"``: no division (Dr.GRPO). A group whose rewards are all equal gets exactly 0.
    """
    if scale not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards={scale!r} is not allowed; use one of {', '.join(SCALE_REWARDS)}")
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [prompts, generations], got shape {tuple(rewards.shape)}")
    r = rewards.float() if not rewards.is_floating_point() else rewards
    centred = r - r.mean(dim=1, keepdim=True)
    if scale == "group":
        # unbiased std of one sample is NaN; a single-sample group carries no signal anyway
        std = r.std(dim=1, keepdim=True) if r.shape[1] > 1 else torch.zeros_like(r[:, :1])
        adv = centred / (std + eps)
    elif scale == "batch":
        std = r.std() if r.numel() > 1 else torch.zeros((), dtype=r.dtype, device=r.device)
        adv = centred / (std + eps)
    else:
        adv = centred
    # the mean of equal floats can differ from them by rounding: force flat groups to exactly 0
    flat = (r == r[:, :1]).all(dim=1, keepdim=True)
    return torch.where(flat, torch.zeros_like(adv), adv)


def negative_reinforce_advantages(rewards: Tensor, success: Tensor, positive_weight: float = 0.1) -> Tensor:
    """W-REINFORCE (Zhu et al. 2025, "The Surprising Effectiveness of Negative Reinforcement in LLM
    Reasoning", arXiv 2506.01347): REINFORCE on the outcome with the correct responses' part
    down-weighted by lambda and no baseline: A = lambda r for a success, r - 1 otherwise. With rewards
    in {0, 1} that is lambda and -1, as the paper's code computes it (RLVR-Decomposed,
    ``advantage="weighted"``); lambda = 1 is plain REINFORCE on rewards of +1 and -1, lambda = 0 the
    paper's NSR (only the incorrect responses are pushed down)."""
    r = rewards.double()
    return torch.where(success, positive_weight * r, r - 1.0).to(rewards.dtype)


def group_pass_at_k(correct: Tensor, k: int) -> Tensor:
    """[P, G] correct flags -> [P] each group's pass@k, 1 - C(n - c, k) / C(n, k) (float64)."""
    n = correct.shape[1]
    return torch.tensor([1.0 - math.comb(n - c, k) / math.comb(n, k) for c in correct.sum(dim=1).tolist()])


def passk_advantages(correct: Tensor, k: int, eps: float = 1e-6) -> Tensor:
    """[P, G] correct flags -> Pass@k Training's analytic advantages (Chen et al. 2025, arXiv
    2508.10751; their code, RUCAIBox/Passk_Training). In a group of n responses with c correct, the
    group's reward is its pass@k, rho = 1 - C(n-c, k) / C(n, k), with sigma = sqrt(rho (1 - rho)); a
    correct response gets (1 - rho) / (sigma + eps) and an incorrect one
    (1 - rho - C(n-c-1, k-1) / C(n-1, k-1)) / (sigma + eps): a rare correct answer is worth more, and
    an incorrect one costs less when the group already holds one. k = 1 is GRPO's advantage with the
    group's population std; a group all correct or all wrong gets 0."""
    n = correct.shape[1]
    out = torch.zeros(correct.shape, dtype=torch.float64)
    for p, (c, rho) in enumerate(zip(correct.sum(dim=1).tolist(), group_pass_at_k(correct, k).tolist())):
        sigma = math.sqrt(rho * (1.0 - rho))
        positive = (1.0 - rho) / (sigma + eps)
        # the chance that the other k - 1 of a draw holding this incorrect response are incorrect too
        others_wrong = math.comb(n - c - 1, k - 1) / math.comb(n - 1, k - 1) if c < n else 0.0
        negative = (1.0 - rho - others_wrong) / (sigma + eps)
        out[p] = torch.where(correct[p], torch.tensor(positive), torch.tensor(negative))
    return out.float()


def adaptive_entropy_coef(
    measured: Sequence[float], start: float, target: float, delta: float, low: float, high: float
) -> tuple[float, float]:
    """Adaptive entropy control as TRL 1.16 runs it (``GRPOConfig.use_adaptive_entropy``, after
    Skywork-OR1, arXiv 2505.22312), replayed over the mean token entropy ``measured`` of each step so
    far: after each step the coefficient moves by +delta when that step's entropy was at or below
    ``target`` and by -delta otherwise, kept in [low, high]; a step applies the coefficient only when
    the step before it was at or below the target (none on the first step). Returns (the controller's
    coefficient now, the coefficient this step applies)."""
    coef, last = start, math.inf
    for entropy in measured:
        coef = min(coef + delta, high) if entropy <= target else max(coef - delta, low)
        last = entropy
    return coef, (coef if last <= target else 0.0)


# --- PPO-clip loss and aggregation ----------------------------------------------------------------
def _per_token(advantages: Tensor, like: Tensor) -> Tensor:
    """A [B] -> [B, 1] so it broadcasts over tokens; [B, T] unchanged."""
    return advantages.unsqueeze(-1) if advantages.dim() == like.dim() - 1 else advantages


def ppo_clip_token_loss(
    logp: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
) -> tuple[Tensor, Tensor]:
    """l = -min(rho A, clip(rho, 1 - eps, 1 + eps_high) A), rho = exp(logp - logp_old).

    Returns (loss [B, T], clipped [B, T] bool): clipped marks tokens where the clipped term is the
    strictly smaller one, i.e. where clipping zeroes the gradient (A > 0, rho > 1 + eps_high or
    A < 0, rho < 1 - eps).
    """
    eps_high = epsilon if epsilon_high is None else epsilon_high
    A = _per_token(advantages, logp).to(logp.dtype)
    rho = torch.exp(logp - logp_old)
    rho_clipped = torch.clamp(rho, 1.0 - epsilon, 1.0 + eps_high)
    clipped = ((A > 0) & (rho > 1.0 + eps_high)) | ((A < 0) & (rho < 1.0 - epsilon))
    # where instead of torch.min: identical value, and no tie-splitting of the gradient
    loss = -torch.where(clipped, rho_clipped * A, rho * A)
    return loss, clipped


def aggregate_loss(
    token_loss: Tensor, mask: Tensor, loss_type: str = "dapo", max_completion_length: int | None = None
) -> Tensor:
    """Scalar loss from [B, T] token losses over valid tokens.

    "dapo": sum / number of valid tokens in the batch; "grpo": per-sequence mean, then mean over
    sequences; "dr_grpo": sum / (B * max_completion_length). An empty mask gives 0, not NaN.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r} is not allowed; use one of {', '.join(LOSS_TYPES)}")
    valid = mask.bool()
    # where, not multiply: padded positions may hold inf/NaN and 0 * inf is NaN
    masked = torch.where(valid, token_loss, torch.zeros_like(token_loss))
    counts = valid.sum(-1).to(token_loss.dtype)
    if loss_type == "dapo":
        return masked.sum() / counts.sum().clamp(min=1)
    if loss_type == "grpo":
        if masked.shape[0] == 0:
            return masked.sum()
        return (masked.sum(-1) / counts.clamp(min=1)).mean()
    if max_completion_length is None or max_completion_length < 1:
        raise ValueError(
            f"max_completion_length={max_completion_length!r}: loss_type='dr_grpo' needs a positive integer"
        )
    return masked.sum() / max(1, masked.shape[0] * int(max_completion_length))


def kl_k3(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """k3 = exp(logp_ref - logp) - (logp_ref - logp) - 1, elementwise, >= 0 (Schulman's estimator)."""
    d = logp_ref - logp
    return torch.expm1(d) - d  # expm1 keeps precision where d is tiny


# --- masked statistics ----------------------------------------------------------------------------
def sampler_mismatch_totals(train_logp: Tensor, sampler_logp: Tensor, mask: Tensor) -> Tensor:
    """[6]: (sum |d|, max |d|, tokens, sum r, min r, max r) over the valid tokens whose sampler
    log-prob is known (NaN: unknown), d = train_logp - sampler_logp, r = exp(d) the importance ratio
    (TRL's ``sampling/*`` numbers). Totals of one micro-batch, on ``train_logp``'s device (masked
    reductions: no host sync per micro-batch); ``combine_mismatch_totals`` joins them."""
    sampler_logp = sampler_logp.float().to(train_logp.device)
    known = mask.bool().to(train_logp.device) & ~sampler_logp.isnan()
    if not known.numel():
        return no_mismatch_totals().to(train_logp.device)
    d = torch.where(known, train_logp.detach().float() - sampler_logp, 0.0)
    size, r = d.abs(), d.exp()
    return torch.stack(
        [
            size.sum(),
            size.max(),  # 0 where no token is known, as no_mismatch_totals
            known.sum().float(),
            torch.where(known, r, 0.0).sum(),
            torch.where(known, r, math.inf).min(),
            torch.where(known, r, 0.0).max(),
        ]
    )


def no_mismatch_totals() -> Tensor:
    """The totals of no token: what ``combine_mismatch_totals`` starts from."""
    return torch.tensor([0.0, 0.0, 0.0, 0.0, math.inf, 0.0])


def combine_mismatch_totals(totals: Tensor) -> Tensor:
    """[k, 6] totals of k micro-batches (or processes) -> [6]: sums add, maxima and minima reduce."""
    return torch.stack(
        [
            totals[:, 0].sum(),
            totals[:, 1].max(),
            totals[:, 2].sum(),
            totals[:, 3].sum(),
            totals[:, 4].min(),
            totals[:, 5].max(),
        ]
    )


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """sum(x over valid) / number valid; an empty mask gives 0."""
    valid = mask.bool()
    total = torch.where(valid, x, torch.zeros_like(x)).sum()
    return total / valid.sum().clamp(min=1).to(total.dtype)


def _quantile_sorted(values: Tensor, q: float) -> Tensor:
    """Linear-interpolation quantile (numpy/torch default) of an ascending 1-D tensor."""
    pos = q * (values.numel() - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, values.numel() - 1)
    frac = pos - lo
    if frac == 0.0:
        return values[lo]
    return values[lo] + (values[hi] - values[lo]) * frac


def masked_quantiles(x: Tensor, mask: Tensor, qs: Sequence[float]) -> list[float]:
    """Quantiles (linear interpolation) of the valid entries of x; NaNs when nothing is valid."""
    for q in qs:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile {q!r} must be in [0, 1]")
    values = x.detach()[mask.bool()]
    if values.numel() == 0:
        return [float("nan")] * len(qs)
    # sort instead of torch.quantile: no input-size limit
    values = values.double().sort().values
    return [float(_quantile_sorted(values, q)) for q in qs]


# --- baselines: token selection and advantage shaping ---------------------------------------------
def top_entropy_mask(entropy: Tensor, mask: Tensor, top_entropy_quantile: float) -> Tensor:
    """Valid tokens with H >= the (1 - q) quantile of the batch's valid entropies (80/20: q = 0.2).

    q = 1.0 keeps every valid token.
    """
    q = top_entropy_quantile
    if not 0.0 < q <= 1.0:
        raise ValueError(f"top_entropy_quantile={q!r} must be in (0, 1]")
    valid = mask.bool()
    if q >= 1.0 or not valid.any():
        return valid.clone()
    values = entropy.detach()[valid].double().sort().values
    threshold = _quantile_sorted(values, 1.0 - q)
    return valid & (entropy.detach().double() >= threshold)


def entropy_advantage(advantages: Tensor, entropy: Tensor, alpha: float = 0.4, kappa: float = 2.0) -> Tensor:
    """A~ = A + min(alpha * H.detach(), |A| / kappa) (Cheng et al. 2025), shape [B, T].

    The cap |A| / kappa keeps the bonus from flipping the sign of a negative advantage.
    """
    if not kappa > 0:
        raise ValueError(f"kappa={kappa!r} must be > 0")
    A = _per_token(advantages, entropy)
    bonus = torch.minimum(alpha * entropy.detach(), A.abs() / kappa)
    return A + bonus


def _covariance(advantages: Tensor, logp: Tensor, valid: Tensor) -> Tensor:
    """cov_i = (A_i - mean A)(logp_i - mean logp), means over valid tokens, detached."""
    A = _per_token(advantages, logp).detach().expand_as(logp).to(compute_dtype(logp.dtype))
    lp = logp.detach().to(A.dtype)
    return (A - masked_mean(A, valid)) * (lp - masked_mean(lp, valid))


def _selection_count(ratio: float, n_valid: int) -> int:
    """max(1, floor(ratio * N)); the tiny slack stops 0.0002 * 15000 = 2.999.. from flooring to 2."""
    if ratio < 0:
        raise ValueError(f"ratio={ratio!r} must be >= 0")
    return max(1, int(math.floor(ratio * n_valid + 1e-9)))


def clip_cov_mask(
    advantages: Tensor,
    logp: Tensor,
    mask: Tensor,
    clipped: Tensor,
    ratio: float = 0.0002,
    low: float = 1.0,
    high: float = 5.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Tokens whose loss Clip-Cov zeroes (Cui et al. 2025, verl).

    Candidates: valid, not ratio-clipped tokens with low < cov_i < high; pick at random
    max(1, floor(ratio * N)) of them (all if fewer), N = number of valid tokens.
    """
    valid = mask.bool()
    out = torch.zeros(valid.shape, dtype=torch.bool, device=valid.device)
    n_valid = int(valid.sum())
    if n_valid == 0:
        return out
    cov = _covariance(advantages, logp, valid)
    candidates = valid & ~clipped.bool() & (cov > low) & (cov < high)
    idx = candidates.reshape(-1).nonzero().squeeze(-1)
    if idx.numel() == 0:
        return out
    k = min(_selection_count(ratio, n_valid), idx.numel())
    perm = torch.randperm(idx.numel(), generator=generator, device=generator.device if generator else "cpu")
    out.view(-1)[idx[perm[:k].to(idx.device)]] = True
    return out


def kl_cov_mask(advantages: Tensor, logp: Tensor, mask: Tensor, ratio: float = 0.0002) -> Tensor:
    """The top max(1, floor(ratio * N)) valid tokens by cov_i (KL-Cov adds the |logp - logp_old| penalty there)."""
    valid = mask.bool()
    out = torch.zeros(valid.shape, dtype=torch.bool, device=valid.device)
    n_valid = int(valid.sum())
    if n_valid == 0:
        return out
    cov = _covariance(advantages, logp, valid)
    cov = torch.where(valid, cov, torch.full_like(cov, -math.inf))
    k = min(_selection_count(ratio, n_valid), n_valid)
    out.view(-1)[cov.reshape(-1).topk(k).indices] = True
    return out
