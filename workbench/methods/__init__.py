"""Training methods: small classes with hooks over the step (see ``base.Method`` and ``workbench.step``)."""

from __future__ import annotations

from workbench.methods.base import Method
from workbench.methods.eepo import EEPO
from workbench.methods.erpo import ERPO
from workbench.methods.grpo import (
    GRPO,
    AdaptiveEntropy,
    ClipCov,
    ClipHigher,
    EntropyAdvantage,
    EntropyBonus,
    KLCov,
    TopEntropy,
)
from workbench.methods.outcome_baselines import PasskTraining, WReinforce
from workbench.methods.policy_split import PolicySplit
from workbench.methods.poly_epo import GRPODiv, PolyEPO

_REGISTRY: dict[str, type[Method]] = {
    m.name: m
    for m in (
        GRPO,
        EntropyBonus,
        ClipHigher,
        TopEntropy,
        EntropyAdvantage,
        ClipCov,
        KLCov,
        EEPO,
        PolicySplit,
        ERPO,
        PolyEPO,
        GRPODiv,
        WReinforce,
        PasskTraining,
        AdaptiveEntropy,
    )
}


# the methods a study compares unless told otherwise: GRPO, two baselines and the four exploration methods
STUDIED = ("grpo", "entropy_bonus", "clip_higher", "eepo", "policy_split", "erpo", "poly_epo")


def names() -> list[str]:
    return sorted(_REGISTRY)


def modes() -> dict[str, str | None]:
    """Every prompt context some method samples in, with its system prompt (None: the prompt as it is)."""
    return {mode: system for method in _REGISTRY.values() for mode, system in method.MODES.items()}


def get(name: str) -> type[Method]:
    from workbench.options import ConfigError

    if name not in _REGISTRY:
        raise ConfigError("method", name, f"one of {', '.join(names())}")
    return _REGISTRY[name]


__all__ = [
    "Method",
    "EEPO",
    "ERPO",
    "GRPO",
    "GRPODiv",
    "PolicySplit",
    "PolyEPO",
    "PasskTraining",
    "AdaptiveEntropy",
    "WReinforce",
    "ClipCov",
    "EntropyAdvantage",
    "KLCov",
    "ClipHigher",
    "EntropyBonus",
    "TopEntropy",
    "get",
    "modes",
    "names",
]
