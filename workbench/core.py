"""Shared tensor core of every method: advantages, log-probs, entropy, PPO-clip, aggregation, KL, masks.

Pure torch, no model or UI code. Response tensors are [B, T] with a ``mask`` [B, T]
(float or bool, 1 = valid response token). The formulas are those of docs/methods.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

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


# --- log-probs and entropy, chunked over rows -----------------------------------------------------
def _row_pieces(x: Tensor, chunk_size: int) -> Iterator[tuple[int, Tensor]]:
    """Yield (first flat row, [n, V] piece) covering the rows of ``x`` [..., V] in flat order.

    Works on non-contiguous views such as ``logits[:, :-1]`` without copying the whole tensor.
    """
    V = x.shape[-1]
    n_rows = x.numel() // V if V else 0
    if n_rows == 0:
        return
    try:
        x3 = x.view(1, n_rows, V)  # viewable: chunk the flat rows directly
    except RuntimeError:
        x3 = x.reshape(-1, x.shape[-2], V)  # e.g. a sliced [B, T, V]: a view with rows per sequence
    S, L, _ = x3.shape
    if L >= chunk_size:
        for s in range(S):
            for t in range(0, L, chunk_size):
                yield s * L + t, x3[s, t : t + chunk_size]
    else:  # short sequences: group several per chunk (reshape copies at most one chunk)
        per = max(1, chunk_size // L)
        for s in range(0, S, per):
            yield s * L, x3[s : s + per].reshape(-1, V)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class _LogpEntropy(torch.autograd.Function):
    """Chunked log p(ids) and entropy; backward recomputes softmax per chunk instead of saving it.

    With z = x / tau, p = softmax(z), lse = logsumexp(z):
      d logp / dz = onehot(id) - p
      d H / dz    = p * (E_p[z] - z) = p * (lse - H - z)
    """

    @staticmethod
    def forward(ctx, logits, ids, temperature, chunk_size, need_logp, need_entropy):
        lead, V = logits.shape[:-1], logits.shape[-1]
        n_rows = logits.numel() // V if V else 0
        cdt = _compute_dtype(logits.dtype)
        lse = torch.empty(n_rows, dtype=cdt, device=logits.device)
        logp = torch.empty(n_rows, dtype=cdt, device=logits.device) if need_logp else None
        ent = torch.empty(n_rows, dtype=cdt, device=logits.device) if need_entropy else None
        flat_ids = ids.reshape(n_rows) if need_logp else None
        for r0, piece in _row_pieces(logits, chunk_size):
            n = piece.shape[0]
            z = piece.to(cdt) / temperature
            lz = torch.logsumexp(z, dim=-1)
            lse[r0 : r0 + n] = lz
            if need_logp:
                logp[r0 : r0 + n] = z.gather(-1, flat_ids[r0 : r0 + n, None].long()).squeeze(-1) - lz
            if need_entropy:
                ent[r0 : r0 + n] = entropy_from_logprobs(z - lz[:, None])
        ctx.save_for_backward(logits, flat_ids if need_logp else None, lse, ent)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        ctx.set_materialize_grads(False)
        out_logp = logp.view(lead) if need_logp else None
        out_ent = ent.view(lead) if need_entropy else None
        return out_logp, out_ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        logits, flat_ids, lse, ent = ctx.saved_tensors
        if g_logp is None and g_ent is None:
            return None, None, None, None, None, None
        tau, V = ctx.temperature, logits.shape[-1]
        cdt = lse.dtype
        grad = torch.zeros(logits.shape, dtype=logits.dtype, device=logits.device)
        grad_flat = grad.view(-1, V)
        g_logp = g_logp.reshape(-1).to(cdt) if g_logp is not None else None
        g_ent = g_ent.reshape(-1).to(cdt) if g_ent is not None else None
        for r0, piece in _row_pieces(logits, ctx.chunk_size):
            n = piece.shape[0]
            rows = slice(r0, r0 + n)
            z = piece.to(cdt) / tau
            p = torch.exp(z - lse[rows, None])
            gz = torch.zeros_like(z)
            if g_logp is not None:
                gz -= p * g_logp[rows, None]
                gz.scatter_add_(-1, flat_ids[rows, None].long(), g_logp[rows, None])
            if g_ent is not None:
                gz += p * (lse[rows, None] - ent[rows, None] - z) * g_ent[rows, None]
            grad_flat[rows] = (gz / tau).to(logits.dtype)
        return grad, None, None, None, None, None


def entropy_from_logprobs(logp: Tensor, probs: Tensor | None = None) -> Tensor:
    """H = -sum_v p_v log p_v over the last dim, from log-probs (nats), with 0 log 0 = 0.

    The one entropy formula: the sampler applies it to its log-softmax, ``token_entropy`` to
    each chunk. Summing p log p term by term keeps a peaked distribution's small H accurate,
    where logsumexp(z) - E_p[z] would subtract two nearly equal numbers. ``probs``: exp(logp),
    when the caller has it already (the sampler), so it is not computed twice.
    """
    return -((logp.exp() if probs is None else probs) * logp).nan_to_num().sum(-1)


def _check_chunking(temperature: float, chunk_size: int) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r} must be > 0")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be >= 1")


def selective_log_softmax(logits: Tensor, ids: Tensor, temperature: float = 1.0, chunk_size: int = 1024) -> Tensor:
    """logp[b, t] = log softmax(logits[b, t] / temperature)[ids[b, t]], in fp32 (fp64 stays fp64).

    Computed row-chunk by row-chunk: no full-size fp32 copy of the logits is ever made.
    """
    _check_chunking(temperature, chunk_size)
    if ids.shape != logits.shape[:-1]:
        raise ValueError(f"ids shape {tuple(ids.shape)} does not match logits {tuple(logits.shape)}")
    logp, _ = _LogpEntropy.apply(logits, ids, float(temperature), int(chunk_size), True, False)
    return logp


def token_entropy(logits: Tensor, temperature: float = 1.0, chunk_size: int = 1024) -> Tensor:
    """H = -sum_v p_v log p_v with p = softmax(logits / temperature) (nats), shape logits[..., 0].

    Chunks of ``chunk_size`` flat rows, so the fp32 softmax is never materialized whole; differentiable.
    """
    _check_chunking(temperature, chunk_size)
    _, ent = _LogpEntropy.apply(logits, None, float(temperature), int(chunk_size), False, True)
    return ent


def logprobs_and_entropy(
    logits: Tensor, ids: Tensor, temperature: float = 1.0, chunk_size: int = 1024
) -> tuple[Tensor, Tensor]:
    """(selective_log_softmax, token_entropy) in one chunked pass sharing the logsumexp; differentiable."""
    _check_chunking(temperature, chunk_size)
    if ids.shape != logits.shape[:-1]:
        raise ValueError(f"ids shape {tuple(ids.shape)} does not match logits {tuple(logits.shape)}")
    return _LogpEntropy.apply(logits, ids, float(temperature), int(chunk_size), True, True)


def complement_logprobs(logits: Tensor, ids: Tensor, temperature: float = 1.0) -> Tensor:
    """log(1 - p[b, t]), p = softmax(logits[b, t] / temperature)[ids[b, t]], in fp32 (fp64 stays fp64) [B, T].

    Taken as the log-sum-exp of the other tokens' logits minus that of all of them, never as
    log(1 - exp(logp)): exact where p is within float rounding of 1, and its gradient on the
    target logit is exactly -p (so -log(1 - p) pushes the target down with weight p)."""
    _check_chunking(temperature, 1)
    if ids.shape != logits.shape[:-1]:
        raise ValueError(f"ids shape {tuple(ids.shape)} does not match logits {tuple(logits.shape)}")
    z = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature  # [B, T, V]
    others = z.scatter(-1, ids.unsqueeze(-1), float("-inf"))  # the target left out
    return torch.logsumexp(others, -1) - torch.logsumexp(z, -1)


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
    A = _per_token(advantages, logp).detach().expand_as(logp).to(_compute_dtype(logp.dtype))
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
