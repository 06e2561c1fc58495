"""The GRPOConfig a RunConfig means: one step = one generation of ``num_prompts`` x ``num_generations``
rows, split over the processes by whole groups, with the RunConfig's sampling, optimiser and loss
settings. Everything else TRL offers (vLLM, DeepSpeed, logging) is the user's, by name.

``report_to`` is passed through: TRL's own trackers report TRL's metrics under its output_dir
(RUN_DIR/trl: TensorBoard in trl/runs/, W&B in trl/wandb/), apart from the workbench's (RUN_DIR/tensorboard,
RUN_DIR/wandb: every metric of metrics.jsonl, the workbench's columns included; ``workbench.run.trackers``)."""

from __future__ import annotations

import dataclasses
import os
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from workbench.config import ConfigError, RunConfig
from workbench.engine import devices

if TYPE_CHECKING:  # imported where it is used: trl comes with the [scale] extra
    from trl import GRPOConfig


def on_cpu(cfg: RunConfig) -> bool:
    return cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())


def half_precision(cfg: RunConfig) -> str | None:
    """The run's half-precision dtype ("bfloat16", "float16"), None for float32; ``dtype="auto"`` is
    chosen as for the workbench's Trainer (``devices.precision``: measured on a CPU)."""
    chosen = devices.precision(cfg.dtype, torch.device("cpu" if on_cpu(cfg) else "cuda"))
    return chosen if chosen in devices.HALF else None


def _owned_fields(cfg: RunConfig, settings: dict, output_dir: Path, steps: int, processes: int) -> dict:
    """The GRPOConfig fields the run's config decides."""
    per_process = cfg.num_prompts // processes * cfg.num_generations
    cpu, half = on_cpu(cfg), half_precision(cfg)
    return {
        "output_dir": str(output_dir),
        # TRL counts an optimizer step a step: num_iterations of them train one generation
        "max_steps": steps * cfg.num_iterations,
        "seed": cfg.seed,
        # one generation a step, cut into gradient_accumulation_steps micro-batches
        "per_device_train_batch_size": per_process // cfg.gradient_accumulation_steps,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "num_generations": cfg.num_generations,
        "max_completion_length": cfg.max_completion_length,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "top_k": cfg.top_k,
        "learning_rate": cfg.learning_rate,
        "weight_decay": cfg.weight_decay,
        "max_grad_norm": cfg.max_grad_norm,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,  # the workbench's AdamW at a constant rate
        "num_iterations": cfg.num_iterations,
        "loss_type": cfg.loss_type,
        "scale_rewards": cfg.scale_rewards,
        "epsilon": settings["epsilon"],
        "epsilon_high": settings["epsilon_high"] or settings["epsilon"],
        "beta": settings["beta"],
        "use_cpu": cpu,
        "bf16": half == "bfloat16",
        "fp16": half == "float16",
        "activation_checkpointing": cfg.gradient_checkpointing,
        # non-reentrant: keys and values a pass hands to the next (prefix_attention) keep their graph
        "activation_checkpointing_kwargs": {"use_reentrant": False} if cfg.gradient_checkpointing else None,
        # the workbench's own choices: rows in the order sampled, truncated responses trained on
        "shuffle_dataset": False,
        "mask_truncated_completions": False,
        "remove_unused_columns": False,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": (cfg.checkpoint_every or steps) * cfg.num_iterations,
        "report_to": list(cfg.report_to) or "none",
        "dataloader_num_workers": 0,
    }


def grpo_config(
    cfg: RunConfig, settings: dict, output_dir: Path, steps: int, processes: int | None = None, /, **trl
) -> GRPOConfig:
    """The GRPOConfig of a run of ``cfg`` for ``steps`` steps on ``processes`` processes (default:
    accelerate's), with ``trl`` further GRPOConfig fields, each of the type GRPOConfig declares
    (``use_vllm=no`` is text, not false); ``settings`` are the method's loss settings."""
    from accelerate import PartialState
    from trl import GRPOConfig

    check_trl_fields(trl)

    # told about the CPU before anything else asks: the first PartialState decides, and only a CPU
    # one joins the processes a launcher started over gloo
    processes = processes or PartialState(cpu=on_cpu(cfg)).num_processes
    if cfg.num_prompts % processes:
        raise ConfigError(
            "num_prompts",
            cfg.num_prompts,
            f"a multiple of the {processes} processes, so that each process samples whole groups",
        )
    per_process = cfg.num_prompts // processes * cfg.num_generations
    if per_process % cfg.gradient_accumulation_steps:
        raise ConfigError(
            "gradient_accumulation_steps",
            cfg.gradient_accumulation_steps,
            f"a divisor of the {per_process} rows each process trains a step",
        )
    owned = _owned_fields(cfg, settings, output_dir, steps, processes)
    if "wandb" in cfg.report_to:
        trl_wandb_in(output_dir)
    known = {f.name for f in dataclasses.fields(GRPOConfig)}
    if "activation_checkpointing" not in known:  # transformers 4.x names it gradient_checkpointing
        owned["gradient_checkpointing"] = owned.pop("activation_checkpointing")
        owned["gradient_checkpointing_kwargs"] = owned.pop("activation_checkpointing_kwargs")
    # transformers' Trainer turns the model's KV cache off (for the training passes); generation
    # needs it, or every new token runs the whole sequence again (26x slower on the smoke model)
    if not isinstance(trl.get("generation_kwargs") or {}, dict):
        raise ConfigError("trl.generation_kwargs", trl["generation_kwargs"], "a mapping, e.g. {top_p: 0.9}")
    trl["generation_kwargs"] = {"use_cache": True, **(trl.get("generation_kwargs") or {})}
    for name, value in trl.items():
        if name in owned:
            raise ConfigError(
                f"trl.{name}",
                value,
                "a GRPOConfig field the run's config does not set; "
                f"{name} is set by the workbench (use --set FIELD=VALUE for the RunConfig's fields)",
            )
    return GRPOConfig(**owned, **trl)


def trl_wandb_in(output_dir: Path) -> None:
    """TRL's W&B run in ``output_dir``/wandb, offline, unless the user's WANDB_DIR and WANDB_MODE say
    otherwise: transformers' WandbCallback reads only these (it would write to ./wandb, online). W&B reads
    them once a process, so where it is set up already (a notebook, a test) its settings follow them."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    for name, value in (("WANDB_DIR", str(output_dir)), ("WANDB_MODE", "offline")):
        if os.environ.get(name) in (None, _WANDB_SET.get(name)):  # unset, or an earlier run's: not the user's
            os.environ[name] = _WANDB_SET[name] = value
    if "wandb" in sys.modules:
        import wandb

        mode = os.environ["WANDB_MODE"]  # W&B checks it: one of its modes
        wandb.setup(settings=wandb.Settings(root_dir=os.environ["WANDB_DIR"], mode=mode))  # type: ignore[arg-type]


_WANDB_SET: dict[str, str] = {}  # the values trl_wandb_in gave those variables, which the next run's replace


def check_trl_fields(fields: dict) -> None:
    """Each field a GRPOConfig field, of the type GRPOConfig declares for it; ``use_vllm=true`` only
    where vLLM is installed. A ConfigError names the first that is not."""
    import importlib.util
    import typing

    from trl import GRPOConfig

    hints = typing.get_type_hints(GRPOConfig)
    for name, value in fields.items():
        if name not in hints:
            raise ConfigError(f"trl.{name}", value, "a field of trl.GRPOConfig")
        kinds = _plain_types(hints[name])
        if kinds and not _is_one_of(value, kinds):
            allowed = " or ".join(sorted({"null" if k is type(None) else k.__name__ for k in kinds}))
            raise ConfigError(f"trl.{name}", value, f"a value of GRPOConfig's type for {name}: {allowed}")
    if fields.get("use_vllm") and importlib.util.find_spec("vllm") is None:
        raise ConfigError("trl.use_vllm", True, "false here: vLLM is not installed (pip install vllm)")


def _plain_types(hint) -> tuple[type, ...]:
    """The plain classes a type hint allows (``bool | None`` -> bool, NoneType; ``list[str]`` ->
    list); empty when one of them is not a plain class (an enum, a literal): not checked here."""
    import enum
    import typing

    parts = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    kinds = tuple(typing.get_origin(p) or p for p in parts)
    if not all(isinstance(k, type) for k in kinds) or any(issubclass(k, enum.Enum) for k in kinds):
        return ()
    return kinds


def _is_one_of(value, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # a bool is an int to Python, never to a config
        return bool in kinds
    if isinstance(value, int) and float in kinds:
        return True
    return isinstance(value, kinds)
