"""Critical decision pivots: tokens whose entropy stands out within their group.

A pivot is a valid token whose entropy, z-scored over all valid tokens of the group
(the responses to one prompt), exceeds ``z_threshold``; ``top_quantile`` optionally keeps
only the highest such tokens. These are where the response could have gone another way.

``pivot_sensitivity`` tests that claim on one response: from a position, resample n
continuations and count how often the task outcome (reward > 0.5) differs from the
original's, at the row's highest-entropy token and at its lowest-entropy one.
"""

from __future__ import annotations

import contextlib

import torch

from ..sampling import Sampler
from ..tasks import is_success, score_batch


def group_zscore(values: torch.Tensor, mask: torch.Tensor, group: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """z-score of ``values`` [N, T] over the valid tokens of each group; 0 on padding."""
    valid = mask.bool()
    z = torch.zeros_like(values, dtype=torch.float32)
    for g in group.unique():
        rows = group == g
        sel = valid & rows[:, None]
        if sel.any():
            v = values[sel].float()
            z[sel] = (v - v.mean()) / (v.std(correction=0) + eps)
    return z


def find_pivots(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    z_threshold: float = 1.0,
    top_quantile: float | None = None,
    group: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean [N, T] pivot flags. ``group`` [N] says which rows share a prompt (default: all)."""
    group = torch.zeros(entropy.shape[0], dtype=torch.long) if group is None else group
    z = group_zscore(entropy, mask, group.to(entropy.device))
    flags = (z > z_threshold) & mask.bool()
    if top_quantile is not None and flags.any():
        if not 0 < top_quantile <= 1:
            raise ValueError(f"top_quantile={top_quantile} is not allowed: a number in (0, 1]")
        cut = torch.quantile(entropy[flags].float(), 1 - top_quantile)
        flags &= entropy >= cut
    return flags


def pivot_stats(entropy: torch.Tensor, mask: torch.Tensor, pivots: torch.Tensor) -> dict[str, float]:
    """Pivots per response and the mean entropy at pivots versus at other valid tokens."""
    valid = mask.bool()
    other = valid & ~pivots
    return {
        "pivots_per_response": float(pivots.sum()) / max(1, entropy.shape[0]),
        "entropy_at_pivots": float(entropy[pivots].mean()) if pivots.any() else float("nan"),
        "entropy_elsewhere": float(entropy[other].mean()) if other.any() else float("nan"),
    }


def pivot_sensitivity(
    trainer_or_policy,
    batch,
    response: int,
    position: int | None = None,
    n: int = 8,
    task=None,
    seed: int = 0,
    temperature: float | None = None,
    max_completion_length: int | None = None,
) -> dict[str, float]:
    """Outcome flip rates after resampling from a pivot and from a low-entropy position of one row.

    ``response`` is a row of a scored ``batch``. The pivot position is ``position`` when given,
    else the row's highest-entropy token (which is also its highest-entropy pivot whenever it
    has one: pivots are the tokens above a z-score threshold). The low position is the row's
    lowest-entropy valid token other than a final EOS. From each, ``n`` continuations of the
    completion tokens before it are sampled and the full completions (prefix + continuation)
    scored; a flip is an outcome (reward > 0.5) different from the row's own.

    Given a Trainer, its sampler, task, temperature, top-k/top-p, autocast and
    ``max_completion_length`` are used; given a Policy, pass ``task=`` (temperature defaults to
    1.0 and the length limit to the batch width). ``seed`` makes the result deterministic.
    """
    if hasattr(trainer_or_policy, "sampler"):
        trainer = trainer_or_policy
        policy, sampler, cfg = trainer.policy, trainer.sampler, trainer.cfg
        task = trainer.task if task is None else task
        temperature = cfg.temperature if temperature is None else temperature
        limit = cfg.max_completion_length if max_completion_length is None else max_completion_length
        truncation = {"top_k": cfg.top_k or None, "top_p": cfg.top_p}
        autocast = trainer.autocast
    else:
        policy = trainer_or_policy
        if task is None:
            raise ValueError("pivot_sensitivity(policy, ...) needs task=: the task that scores the resampled completions")
        tok = policy.tokenizer
        sampler = Sampler(policy.model, tok.eos_token_id, tok.pad_token_id)
        temperature = 1.0 if temperature is None else temperature
        limit = batch.ids.shape[1] if max_completion_length is None else max_completion_length
        truncation = {}
        autocast = contextlib.nullcontext
    if not 0 <= response < len(batch):
        raise ValueError(f"response={response!r} is not a row of this batch; allowed: 0 to {len(batch) - 1}")
    if n < 1:
        raise ValueError(f"n={n!r} must be an integer >= 1")
    length = int(batch.mask[response].sum())
    if length == 0:
        raise ValueError(f"response={response} has no generated tokens to resample from")
    if position is not None and not 0 <= position < length:
        raise ValueError(f"position={position!r} is not a token of response {response}; allowed: 0 to {length - 1}")
    entropy = batch.entropy[response, :length].float().cpu()
    ids = batch.ids[response, :length].tolist()
    pivot = int(entropy.argmax()) if position is None else position
    # a final EOS is nearly always certain and ends the response: not an interesting low position
    candidates = length - 1 if length > 1 and ids[-1] == policy.tokenizer.eos_token_id else length
    low = int(entropy[:candidates].argmin())

    problem = batch.problems[int(batch.group[response])]
    if batch.rewards is not None:
        original = is_success(float(batch.rewards[response]))
    else:
        original = is_success(score_batch(task, [problem], [batch.text[response]])[0].reward)
    generator = torch.Generator(policy.device).manual_seed(seed)
    policy.model.eval()

    def flip_rate(at: int) -> float:
        prefix = ids[:at]
        with autocast():
            samples = sampler.generate([batch.prompt_ids[response] + prefix], n, max_new_tokens=max(1, limit - at),
                                       temperature=temperature, generator=generator, **truncation)
        head = torch.tensor(prefix, dtype=torch.long, device=samples.ids.device).expand(n, -1)
        full_ids = torch.cat([head, samples.ids], dim=1)
        full_mask = torch.cat([torch.ones_like(head, dtype=samples.mask.dtype), samples.mask], dim=1)
        scores = score_batch(task, [problem] * n, policy.decode(full_ids, full_mask))
        return sum(is_success(s.reward) != original for s in scores) / n

    return {
        "pivot_position": pivot,
        "pivot_entropy": float(entropy[pivot]),
        "pivot_flip_rate": flip_rate(pivot),
        "low_position": low,
        "low_entropy": float(entropy[low]),
        "low_flip_rate": flip_rate(low),
        "n": n,
    }
