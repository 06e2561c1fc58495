"""The device a run's config names, checked against this machine, and the autocast dtype it implies."""

from __future__ import annotations

import torch

from workbench.config import ConfigError


def device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = torch.device(name)
    usable = {
        "cpu": True,
        "cuda": torch.cuda.is_available() and (chosen.index or 0) < torch.cuda.device_count(),
        "mps": torch.backends.mps.is_available(),
    }.get(chosen.type, False)
    if not usable:
        have = ", ".join(
            ["cpu"]
            + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
            + (["mps"] if torch.backends.mps.is_available() else [])
        )
        raise ConfigError("device", name, f"a device this machine has: auto, {have} (the gpu preset needs a CUDA GPU)")
    return chosen


def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return None if name == "float32" else getattr(torch, name)
