"""Log-probs and entropy of chosen tokens from logits, chunked over rows.

One custom autograd function computes log p(ids) and the entropy in a single pass per chunk of
rows and recomputes the softmax in backward instead of saving it, so no full-size fp32 copy of
the [B, T, V] logits is ever held. :mod:`workbench.core` re-exports every public name here.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = [
    "compute_dtype",
    "entropy_from_logprobs",
    "selective_log_softmax",
    "token_entropy",
    "logprobs_and_entropy",
    "complement_logprobs",
]


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


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute in: at least fp32 (fp64 stays fp64)."""
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
        cdt = compute_dtype(logits.dtype)
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
    z = logits.to(compute_dtype(logits.dtype)) / temperature  # [B, T, V]
    others = z.scatter(-1, ids.unsqueeze(-1), float("-inf"))  # the target left out
    return torch.logsumexp(others, -1) - torch.logsumexp(z, -1)
