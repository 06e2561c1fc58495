"""Training methods: small classes with hooks over the trainer (see ``base.Method``)."""

from __future__ import annotations

from .base import Method
from .grpo import GRPO, ClipHigher, EntropyBonus, TopEntropy

_REGISTRY: dict[str, type[Method]] = {m.name: m for m in (GRPO, EntropyBonus, ClipHigher, TopEntropy)}


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> type[Method]:
    from ..config import ConfigError

    if name not in _REGISTRY:
        raise ConfigError("method", name, f"one of {', '.join(names())}")
    return _REGISTRY[name]


__all__ = ["Method", "GRPO", "ClipHigher", "EntropyBonus", "TopEntropy", "get", "names"]
