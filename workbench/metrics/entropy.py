"""Statistics of token entropy over the valid response tokens of a batch, and the reward-entropy fit."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from workbench.core import masked_quantiles

# The 80/20 paper (Wang et al. 2025, arXiv 2506.01939) found 20% of Qwen3-8B's chain-of-thought
# tokens above 0.672 nats. A step's own 80th percentile would put 20% above it by construction,
# so the fraction is counted against this fixed threshold: it falls as entropy collapses.
HIGH_ENTROPY_THRESHOLD = 0.672


def entropy_stats(entropy: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Mean, the 50th/80th/95th percentiles of token entropy (nats) over valid tokens, and the
    fraction of them above ``HIGH_ENTROPY_THRESHOLD``."""
    valid = mask.bool()
    mean = float(entropy[valid].mean()) if valid.any() else float("nan")
    high = float((entropy[valid] > HIGH_ENTROPY_THRESHOLD).float().mean()) if valid.any() else float("nan")
    p50, p80, p95 = masked_quantiles(entropy, mask, (0.5, 0.8, 0.95))
    return {
        "entropy_mean": mean,
        "entropy_p50": p50,
        "entropy_p80": p80,
        "entropy_p95": p95,
        "high_entropy_token_fraction": high,
    }


FIT_MIN_POINTS = 5  # two parameters: fewer points fit anything


def fit_reward_entropy(
    entropy: Iterable[float], reward: Iterable[float], min_points: int = FIT_MIN_POINTS
) -> dict[str, float] | None:
    """Least-squares fit of ``R = -a*exp(H) + b`` (Cui et al. 2025) and its predicted ceiling
    ``b - a`` (the reward when entropy reaches 0). R is linear in exp(H), so this is ordinary
    linear least squares. None with fewer than ``min_points`` finite points or no spread in entropy."""
    h, r = np.asarray(list(entropy), dtype=float), np.asarray(list(reward), dtype=float)
    ok = np.isfinite(h) & np.isfinite(r)
    h, r = h[ok], r[ok]
    if len(h) < max(min_points, 3) or np.ptp(h) < 1e-9:
        return None
    design = np.stack([np.exp(h), np.ones_like(h)], axis=1)
    (slope, b), *_ = np.linalg.lstsq(design, r, rcond=None)
    residual = r - design @ np.array([slope, b])
    spread = float(((r - r.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / spread if spread > 0 else float("nan")
    a = -float(slope)
    return {"a": a, "b": float(b), "ceiling": float(b) - a, "r2": r2, "n": int(len(h))}
