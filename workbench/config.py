"""Run configuration: one dataclass, named presets, YAML load/save and validation.

Option names follow TRL's ``GRPOConfig`` where the concept is the same (``num_generations``,
``temperature``, ``max_completion_length``, ``beta``, ``epsilon``, ``epsilon_high``,
``loss_type``, ``scale_rewards``, ``top_entropy_quantile``, ``learning_rate``).
Method-specific coefficients live in ``method_options`` and are validated by the method.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value is not allowed; the message names the field, the value and what is."""

    def __init__(self, field_name: str, value: Any, allowed: str):
        self.field, self.value, self.allowed = field_name, value, allowed
        super().__init__(f"{field_name}={value!r} is not allowed: {allowed}")


@dataclass
class RunConfig:
    # what to train
    model: str = "tiny"
    task: str = "countdown"
    method: str = "grpo"
    seed: int = 0
    # sampling
    num_prompts: int = 8
    num_generations: int = 8
    max_completion_length: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    # optimisation
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    num_iterations: int = 1
    gradient_accumulation_steps: int = 1
    # most rows x longest row one forward pass of the update holds (rows are grouped by length)
    micro_batch_tokens: int = 4096
    # the loss (METHODS.md section 0 and 1)
    loss_type: str = "dapo"
    scale_rewards: str = "group"
    epsilon: float = 0.2
    epsilon_high: float | None = None
    beta: float = 0.0
    entropy_coef: float = 0.0
    top_entropy_quantile: float = 1.0
    # LoRA
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    # telemetry and storage
    track_kl: bool = True
    pivot_z_threshold: float = 1.0
    save_rollouts: bool = True
    checkpoint_every: int = 0
    # hardware
    device: str = "auto"
    dtype: str = "auto"
    gradient_checkpointing: bool = False
    threads: int = 0
    # method-specific coefficients, e.g. {"alpha": 0.3} for EEPO
    method_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # --- validation -----------------------------------------------------------------
    def validate(self) -> "RunConfig":
        from . import methods, tasks

        _text("model", self.model, "'tiny', a local model directory or a Hugging Face hub name")
        _choice("method", self.method, methods.names())
        _text("task", self.task, f"a built-in task ({', '.join(tasks.names())}), reasoning_gym:NAME or a data file path")
        if self.task.startswith(tasks.REASONING_GYM_PREFIX):
            try:
                tasks.get(self.task)
            except (ImportError, ValueError) as e:
                raise ConfigError("task", self.task, f"reasoning_gym:NAME[?field=value&...] of a reasoning-gym "
                                  f"dataset and its config fields ({e})") from None
        elif self.task not in tasks.names() and not Path(self.task).is_file():
            raise ConfigError("task", self.task, f"a built-in task ({', '.join(tasks.names())}), reasoning_gym:NAME "
                              "or an existing .jsonl/.json/.parquet/.csv file with prompt and answer columns")
        _choice("loss_type", self.loss_type, ("dapo", "grpo", "dr_grpo"))
        _choice("scale_rewards", self.scale_rewards, ("group", "batch", "none"))
        _text("device", self.device, "auto, cpu, cuda, cuda:N or mps")
        _choice("device", self.device.split(":")[0], ("auto", "cpu", "cuda", "mps"))
        _choice("dtype", self.dtype, ("auto", "float32", "bfloat16", "float16"))
        for name, low in (
            ("seed", 0),
            ("num_prompts", 1),
            ("num_generations", 2),
            ("max_completion_length", 1),
            ("top_k", 0),
            ("num_iterations", 1),
            ("gradient_accumulation_steps", 1),
            ("micro_batch_tokens", 1),
            ("lora_r", 1),
            ("lora_alpha", 1),
            ("checkpoint_every", 0),
            ("threads", 0),
        ):
            _integer(name, getattr(self, name), low)
        _number("temperature", self.temperature, 0.0, math.inf, low_open=True)
        _number("top_p", self.top_p, 0.0, 1.0, low_open=True)
        _number("learning_rate", self.learning_rate, 0.0, 1.0)
        _number("weight_decay", self.weight_decay, 0.0, 1.0)
        _number("max_grad_norm", self.max_grad_norm, 0.0, math.inf, low_open=True)
        _number("epsilon", self.epsilon, 0.0, 1.0, low_open=True)
        if self.epsilon_high is not None:
            _number("epsilon_high", self.epsilon_high, 0.0, math.inf, low_open=True)
        _number("beta", self.beta, 0.0, math.inf)
        _number("entropy_coef", self.entropy_coef, 0.0, math.inf)
        _number("top_entropy_quantile", self.top_entropy_quantile, 0.0, 1.0, low_open=True)
        _number("lora_dropout", self.lora_dropout, 0.0, 1.0, high_open=True)
        _number("pivot_z_threshold", self.pivot_z_threshold, -math.inf, math.inf)
        for name in ("track_kl", "save_rollouts", "gradient_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, getattr(self, name), "true or false")
        _target_modules(self.target_modules)
        if not isinstance(self.method_options, dict):
            raise ConfigError("method_options", self.method_options, "a mapping of option name to value")
        methods.get(self.method).validate(self)
        return self

    # --- presets and files ------------------------------------------------------------
    @classmethod
    def preset(cls, name: str = "default", **overrides) -> "RunConfig":
        """A named starting point (see ``PRESETS``) with fields overridden by keyword."""
        if name not in PRESETS:
            raise ConfigError("preset", name, f"one of {', '.join(sorted(PRESETS))}")
        return cls.from_dict({**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known, key=str)
        if unknown:
            raise ConfigError(unknown[0], values[unknown[0]], f"an unknown key; valid keys: {', '.join(sorted(known))}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RunConfig":
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as error:  # a syntax error: say where, not a parser traceback
            raise ConfigError("config", str(path), f"valid YAML ({' '.join(str(error).split())})") from error
        if not isinstance(data, dict):
            raise ConfigError("config", str(path), "a YAML mapping of field: value")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    def replace(self, **changes) -> "RunConfig":
        return self.from_dict({**self.to_dict(), **changes})

    @property
    def batch_size(self) -> int:
        """Responses per step."""
        return self.num_prompts * self.num_generations


# Each preset is a set of overrides of the defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "quick": {"num_prompts": 4, "num_generations": 4, "max_completion_length": 24},
    "dapo": {"epsilon_high": 0.28, "loss_type": "dapo"},
    "dr_grpo": {"scale_rewards": "none", "loss_type": "dr_grpo"},
    "entropy_bonus": {"method": "entropy_bonus"},
    "clip_higher": {"method": "clip_higher"},
    "top_entropy": {"top_entropy_quantile": 0.2},
    "gpu": {"dtype": "bfloat16", "device": "cuda", "gradient_accumulation_steps": 4, "max_completion_length": 256},
}


def _choice(name: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ConfigError(name, value, f"one of {', '.join(map(str, allowed))}")


def _integer(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, value, f"an integer >= {low}")
    if value < low:
        raise ConfigError(name, value, f"an integer >= {low}")


def _text(name: str, value: Any, allowed: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(name, value, allowed)


def _target_modules(value: Any) -> None:
    """PEFT's target_modules: "all-linear" (or one module name), or a non-empty list of names."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ConfigError("target_modules", value, '"all-linear", a module name, or a non-empty list of module names')


def _number(name: str, value: Any, low: float, high: float, low_open: bool = False, high_open: bool = False) -> None:
    bounds = f"{'(' if low_open else '['}{low}, {high}{')' if high_open or high == math.inf else ']'}"
    # infinities are out of range too: the bounds above are open at +-inf
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(name, value, f"a number in {bounds}")
    if value < low or value > high or (low_open and value == low) or (high_open and value == high):
        raise ConfigError(name, value, f"a number in {bounds}")
