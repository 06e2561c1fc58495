"""Exploration Workbench: GRPO-family RL of LoRA policies with entropy, pivot and diversity telemetry.

The engine: no UI imports here. ``widgets`` draws what this package records.
"""

from workbench import core, methods, metrics, tasks
from workbench.config import PRESETS, ConfigError, RunConfig
from workbench.engine.trainer import Trainer
from workbench.models.policy import LoraSettings, Policy, PolicyLoadError
from workbench.step.batch import RolloutBatch
from workbench.step.events import Phase, StepResult

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
