"""Critical decision pivots: tokens whose entropy stands out within their group.

A pivot is a valid token whose entropy, z-scored over all valid tokens of the group
(the responses to one prompt), exceeds ``z_threshold``; ``top_quantile`` optionally keeps
only the highest such tokens. These are where the response could have gone another way.
``workbench.engine.evaluation.pivot_sensitivity`` tests that claim on one response.
"""

from __future__ import annotations

import torch


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
