"""Statistics of token entropy over the valid response tokens of a batch."""

from __future__ import annotations

import torch

from ..core import masked_quantiles


def entropy_stats(entropy: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Mean and the 50th/80th/95th percentiles of token entropy (nats) over valid tokens."""
    valid = mask.bool()
    mean = float(entropy[valid].mean()) if valid.any() else float("nan")
    p50, p80, p95 = masked_quantiles(entropy, mask, (0.5, 0.8, 0.95))
    return {"entropy_mean": mean, "entropy_p50": p50, "entropy_p80": p80, "entropy_p95": p95}
