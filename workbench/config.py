"""Run configuration: one dataclass, named presets, YAML load/save and validation.

Every field is declared once (``workbench.options``): its type, range or choices, default and
one line of help. Validation, YAML and ``--set`` parsing, ``workbench options``, the
hyperparameter panel and the options table of ``docs/methods.md`` read the declarations, and so
do ``set_live`` and ``fork`` (``changes_in``: what a running trainer may change).
Option names follow TRL's ``GRPOConfig`` where the concept is the same (``num_generations``,
``temperature``, ``max_completion_length``, ``beta``, ``epsilon``, ``epsilon_high``,
``loss_type``, ``scale_rewards``, ``top_entropy_quantile``, ``learning_rate``).
Method-specific coefficients live in ``method_options`` and are declared by each method.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from workbench import methods, tasks, yaml12
from workbench.core import LOSS_TYPES, SCALE_REWARDS
from workbench.method_defaults import filled_by_methods, with_method_settings
from workbench.options import (
    ConfigError,
    MethodOptions,
    Option,
    anything,
    choice,
    config_field,
    flag,
    integer,
    number,
    of_dataclass,
    text,
)
from workbench.run import trackers

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class RunConfig:
    # what to train
    model: str = config_field(
        text(
            "tiny",
            "the policy: 'tiny' (embedded), 'smollm2-135m', a model directory or a hub name",
            "'tiny', 'smollm2-135m', a local model directory or a Hugging Face hub name",
            changes_in="new_run",
        )
    )
    task: str = config_field(
        text(
            "countdown",
            "the task: a built-in name, reasoning_gym:NAME[?field=value] or a data file",
            f"a built-in task ({', '.join(tasks.names())}), reasoning_gym:NAME, a data file path "
            "or external:LABEL (a run trained outside the workbench)",
            suggestions=tuple(tasks.names()),
        )
    )
    method: str = config_field(
        choice("grpo", "the training method (GRPO, a baseline or an exploration method)", methods.names())
    )
    seed: int = config_field(
        integer(0, "seeds the adapter's initialisation, the prompts and every sampling stream", high=2**63 - 2)
    )
    # sampling
    num_prompts: int = config_field(integer(8, "prompts a step", low=1))
    num_generations: int = config_field(integer(8, "responses a prompt (the group size G)", low=2))
    max_completion_length: int = config_field(integer(32, "most tokens a response", low=1))
    # below about 0.01 the logits / temperature of a float32 model overflow to inf and sampling breaks
    temperature: float = config_field(
        number(
            1.0, "sampling temperature (also divides the logits of the loss)", low=0.01, high=100.0, changes_in="live"
        )
    )
    top_p: float = config_field(
        number(
            1.0,
            "nucleus sampling: keep the smallest set of tokens of this probability",
            low=0.0,
            high=1.0,
            low_open=True,
            changes_in="live",
        )
    )
    top_k: int = config_field(integer(0, "sample among the k most likely tokens (0: all)", changes_in="live"))
    # optimisation
    learning_rate: float = config_field(
        number(2e-3, "AdamW learning rate of the adapter", low=0.0, high=1.0, changes_in="live")
    )
    weight_decay: float = config_field(number(0.0, "AdamW weight decay", low=0.0, high=1.0))
    max_grad_norm: float = config_field(
        number(1.0, "clip the gradient to this norm", low=0.0, low_open=True, changes_in="live")
    )
    num_iterations: int = config_field(
        integer(
            None,
            "updates on each batch (PPO epochs; 1: on-policy, every ratio 1, so the clip never acts)",
            low=1,
            optional=True,
            none_means=filled_by_methods("num_iterations"),
        )
    )
    gradient_accumulation_steps: int = config_field(
        integer(1, "split each update into this many micro-batches at least", low=1)
    )
    micro_batch_tokens: int = config_field(
        integer(
            4096, "most rows x longest row one forward pass of the update holds (rows are grouped by length)", low=1
        )
    )
    # the loss (docs/methods.md sections 0 and 1). None: the method's setting (Method.CONFIG_DEFAULTS),
    # filled in when the config is made, so that config.yaml records what trains
    loss_type: str | None = config_field(
        Option(
            None,
            "how token losses are averaged: dapo (over all tokens), grpo (per response), dr_grpo (by the length limit)",
            "choice",
            choices=LOSS_TYPES,
            optional=True,
            none_means=filled_by_methods("loss_type"),
        )
    )
    scale_rewards: str = config_field(
        choice("group", "divide advantages by the std of the group, of the batch, or not at all", SCALE_REWARDS)
    )
    epsilon: float = config_field(
        number(
            0.2,
            "PPO clip range below (and above, unless epsilon_high)",
            low=0.0,
            high=1.0,
            low_open=True,
            changes_in="live",
        )
    )
    epsilon_high: float | None = config_field(
        number(
            None,
            "PPO clip range above (clip-higher)",
            low=0.0,
            low_open=True,
            optional=True,
            changes_in="live",
            none_means=filled_by_methods("epsilon_high", "epsilon"),
        )
    )
    beta: float = config_field(number(0.0, "weight of the KL to the reference in the loss", low=0.0, changes_in="live"))
    entropy_coef: float | None = config_field(
        number(
            None,
            "weight of the entropy bonus in the loss",
            low=0.0,
            optional=True,
            changes_in="live",
            none_means=filled_by_methods("entropy_coef"),
        )
    )
    top_entropy_quantile: float | None = config_field(
        number(
            None,
            "train only on this top fraction of tokens by entropy",
            low=0.0,
            high=1.0,
            low_open=True,
            optional=True,
            changes_in="live",
            none_means=filled_by_methods("top_entropy_quantile"),
        )
    )
    # LoRA
    lora_r: int = config_field(integer(8, "LoRA rank", low=1, changes_in="new_run"))
    lora_alpha: int = config_field(
        integer(16, "LoRA alpha (the adapter is scaled by alpha / r)", low=1, changes_in="new_run")
    )
    lora_dropout: float = config_field(
        number(0.0, "LoRA dropout", low=0.0, high=1.0, high_open=True, changes_in="new_run")
    )
    target_modules: str | list[str] = config_field(
        anything(
            "all-linear",
            "the layers that get an adapter",
            '"all-linear", a module name, or a non-empty list of module names',
            changes_in="new_run",
            comma_list=True,
        )
    )
    # telemetry and storage
    track_kl: bool = config_field(flag(True, "measure the KL to the reference even when beta is 0 (telemetry)"))
    pivot_z_threshold: float = config_field(
        number(1.0, "a token is a pivot when its entropy is this many stds above its group's", changes_in="live")
    )
    save_rollouts: bool = config_field(flag(True, "write every step's rollouts to the run directory"))
    report_to: list[str] = config_field(
        anything(
            [], "trackers that get every step too (TRL's names)", trackers.ALLOWED, changes_in="live", comma_list=True
        ),
        default_factory=list,
    )
    checkpoint_every: int = config_field(
        integer(0, "save a checkpoint every this many steps (0: when a run starts, ends or is interrupted only)")
    )
    # hardware
    device: str = config_field(
        text(
            "auto",
            "where to train: auto, cpu, cuda, cuda:N or mps",
            "auto, cpu, cuda, cuda:N or mps",
            changes_in="new_run",
            suggestions=DEVICES,
        )
    )
    dtype: str = config_field(
        choice(
            "auto", "autocast dtype (auto: bfloat16 on a GPU that has it, else float32)", DTYPES, changes_in="new_run"
        )
    )
    gradient_checkpointing: bool = config_field(
        flag(False, "recompute activations in the backward pass (less memory, slower)")
    )
    threads: int = config_field(integer(0, "CPU threads (0: all cores)"))
    check_memory: bool = config_field(
        flag(
            True,
            "refuse a run whose step cannot fit in the free memory (an "
            "estimate from the sizes, made before anything is allocated)",
        )
    )
    # method-specific coefficients, e.g. {"alpha": 0.3} for EEPO: those the run sets (MethodOptions.explicit)
    method_options: dict[str, Any] = config_field(
        anything(
            {},
            "the method's own options (see the method's table)",
            "a mapping of option name to value",
            changes_in="live",
        ),
        default_factory=dict,
    )

    def __post_init__(self) -> None:
        # numpy scalars become the Python numbers they stand for (so YAML can write them)
        for name, option in OPTIONS.items():
            setattr(self, name, option.coerce(getattr(self, name)))
        self.report_to = trackers.names(self.report_to)  # "tensorboard,wandb" (--set) as a list
        method = methods.get(self.method) if self.method in methods.names() else None
        for name, value in (method.CONFIG_DEFAULTS if method else {}).items():
            if getattr(self, name) is None:  # the method's (its paper's) setting, recorded as such
                setattr(self, name, value)
        declared = method.OPTIONS if method else {}
        if isinstance(self.method_options, dict):
            self.method_options = {
                k: declared[k].coerce(v) if k in declared else v for k, v in self.method_options.items()
            }
        self.validate()

    # --- validation -----------------------------------------------------------------
    def validate(self) -> RunConfig:
        for name, option in OPTIONS.items():
            option.check(getattr(self, name))
        builtin = ", ".join(tasks.names())
        if self.task.startswith(tasks.REASONING_GYM_PREFIX):
            try:
                tasks.get(self.task)
            except (ImportError, ValueError) as e:
                raise ConfigError(
                    "task",
                    self.task,
                    f"reasoning_gym:NAME[?field=value&...] of a reasoning-gym dataset and its config fields ({e})",
                ) from None
        elif tasks.is_external(self.task):
            pass  # trained elsewhere: recorded, never sampled here
        elif self.task not in tasks.names() and not Path(self.task).is_file():
            relative = (
                ""
                if Path(self.task).is_absolute()
                else (f" (a relative path is read from the current directory, {Path.cwd()}; give the absolute path)")
            )
            raise ConfigError(
                "task",
                self.task,
                f"a built-in task ({builtin}), reasoning_gym:NAME "
                f"or an existing .jsonl/.json/.parquet/.csv file with prompt and answer columns{relative}",
            )
        if self.device.split(":")[0] not in DEVICES:
            raise ConfigError("device", self.device, OPTIONS["device"].allowed())
        _target_modules(self.target_modules)
        trackers.names(self.report_to)
        if not isinstance(self.method_options, dict):
            raise ConfigError("method_options", self.method_options, OPTIONS["method_options"].allowed())
        methods.get(self.method).validate(self)
        return self

    # --- presets and files ------------------------------------------------------------
    @classmethod
    def preset(cls, name: str = "default", **overrides) -> RunConfig:
        """A named starting point (see ``PRESETS``) with fields overridden by keyword."""
        if name not in PRESETS:
            raise ConfigError("preset", name, f"one of {', '.join(sorted(PRESETS))}")
        return cls.from_dict({**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known, key=str)
        if unknown:
            raise ConfigError(unknown[0], values[unknown[0]], f"an unknown key; valid keys: {', '.join(sorted(known))}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        try:
            data = yaml12.safe_load(Path(path).read_text())
        except yaml.YAMLError as error:  # a syntax error: say where, not a parser traceback
            raise ConfigError("config", str(path), f"valid YAML ({' '.join(str(error).split())})") from error
        if not isinstance(data, dict) or not data:
            raise ConfigError(
                "config",
                str(path),
                "a YAML mapping of field: value (this file is "
                f"{'empty' if data is None or data == {} else 'a ' + type(data).__name__})",
            )
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    def replace(self, **changes) -> RunConfig:
        """A copy with ``changes`` (what ``set_live``, ``fork`` and ``resume`` take). A
        ``method_options`` change names only the options it changes (``MethodOptions.merged``).
        Another method starts from its own settings: its options are those ``changes`` give, and
        the fields the old one filled in (``Method.CONFIG_DEFAULTS``) get the new one's unless
        ``changes`` sets them."""
        values = {**self.to_dict(), **changes}
        if values["method"] == self.method:
            if isinstance(changes.get("method_options"), Mapping):
                values["method_options"] = MethodOptions(self.method_options).merged(changes["method_options"]).explicit
        elif values["method"] in methods.names():  # another name is refused by validation, naming the choices
            values = with_method_settings(
                {**values, "method_options": changes.get("method_options", {})},
                self.method,
                values["method"],
                kept=changes,
            )
        return self.from_dict(values)

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


def _target_modules(value: Any) -> None:
    """PEFT's target_modules: "all-linear" (or one module name), or a non-empty list of names."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ConfigError("target_modules", value, '"all-linear", a module name, or a non-empty list of module names')


OPTIONS = of_dataclass(RunConfig)  # every field's declaration, by name


def options_markdown() -> str:
    """The options tables of ``docs/methods.md``: every RunConfig field, then each method's options."""
    from workbench.options import markdown_table

    parts = ["### RunConfig", "", markdown_table(OPTIONS, changes_in=True)]
    for name in methods.names():
        declared = methods.get(name).OPTIONS
        if declared:
            parts += ["", f"### method_options of `{name}`", "", markdown_table(declared, prefix="method_options.")]
    return "\n".join(parts) + "\n"
