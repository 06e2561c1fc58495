"""Exploration Workbench: GRPO-family RL of LoRA policies with entropy, pivot and diversity telemetry.

The engine: no UI imports here. ``widgets`` draws what this package records.
"""

from . import core, methods, metrics, tasks
from .batch import RolloutBatch
from .config import PRESETS, ConfigError, RunConfig
from .events import Phase, StepResult
from .policy import LoraSettings, Policy, PolicyLoadError
from .trainer import Trainer

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "ConfigError",
    "LoraSettings",
    "Phase",
    "Policy",
    "PolicyLoadError",
    "RolloutBatch",
    "RunConfig",
    "StepResult",
    "Trainer",
    "core",
    "methods",
    "metrics",
    "tasks",
]
