"""Export: a run's rollouts and adapter in the formats the Hugging Face tools read, for use outside the workbench.

``export_rollouts`` writes every kept response as one row of a ``datasets.Dataset`` (``save_to_disk``;
``datasets.load_from_disk`` reads it), its token columns (ids, log-probs, entropies, top-k...) as lists.
``export_adapter`` writes a checkpoint's LoRA adapter in PEFT's format (``adapter_config.json``,
``adapter_model.safetensors``), so that ``PeftModel.from_pretrained(base, DIR)`` loads it with the
weights the run trained, and a model card (README.md): base model, method, task, steps, last metrics.
PEFT itself writes the adapter from the policy the run trains (the base model with the run's LoRA
settings), so the config always matches the weights: the base model is loaded once, on the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from workbench.options import ConfigError
from workbench.run.store import RunStore


def export_rollouts(run: str | Path, out_dir: str | Path) -> Path:
    """Every response of every step ``run`` kept, one row each, as a ``datasets.Dataset`` saved in
    ``out_dir`` (new or empty). Returns ``out_dir``."""
    import datasets

    store, target = RunStore(run), _empty_target("rollouts", out_dir)
    steps = store.rollout_steps()
    if not steps:
        raise ConfigError(
            "run_dir", str(store.dir), "a run that kept its rollouts (save_rollouts: true); it holds none"
        )
    frame = pd.concat([store.read_rollouts(step) for step in steps], ignore_index=True)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a command's output is its one line of what it wrote
    try:
        datasets.Dataset.from_pandas(frame, preserve_index=False).save_to_disk(str(target))
    finally:
        if bars:
            datasets.enable_progress_bars()
    return target


def export_adapter(run: str | Path, out_dir: str | Path, step: int | None = None) -> Path:
    """The adapter of the checkpoint of ``step`` (default: the last) in PEFT's format, with a model
    card, in ``out_dir`` (new or empty). Returns ``out_dir``."""
    from workbench.models.policy import Policy

    store, target = RunStore(run), _empty_target("adapter", out_dir)
    cfg, saved = store.config(), store.checkpoint_steps()
    if step is not None and step not in saved:
        raise ConfigError("step", step, f"the step of one of the run's checkpoints: {', '.join(map(str, saved))}")
    checkpoint = store.load_checkpoint(step)  # checked against its digests before anything is written
    policy = Policy.for_run(cfg)  # on the CPU: the base model and an adapter of the run's shape
    policy.load_adapter_state(checkpoint.adapter)
    policy.model.save_pretrained(str(target))
    metrics = [row for row in store.read_metrics() if row["step"] < checkpoint.step]
    (target / "README.md").write_text(model_card(cfg, checkpoint.step, metrics[-1] if metrics else {}, store.dir))
    return target


def model_card(cfg, steps: int, last_metrics: dict, run_dir: Path) -> str:
    """README.md of an exported adapter: front matter the Hub reads, then what trained it and how it ended."""
    base = cfg.model if cfg.model != "tiny" else "tiny (the workbench's embedded model: workbench.models.loading.load)"
    rows = "\n".join(
        f"| {key} | {value:.6g} |" for key, value in last_metrics.items() if _number(value) and key != "step"
    )
    front = {"library_name": "peft", "tags": list(dict.fromkeys(["lora", "grpo", cfg.method, "exploration-workbench"]))}
    if cfg.model != "tiny":
        front["base_model"] = cfg.model
    header = "\n".join(f"{key}: {json.dumps(value)}" for key, value in front.items())
    return f"""---
{header}
---

# LoRA adapter: {cfg.method} on {cfg.task}

Trained with the Exploration Workbench (run directory `{run_dir}`).

- base model: {base}
- method: {cfg.method}
- task: {cfg.task}
- steps: {steps}
- LoRA: r={cfg.lora_r}, alpha={cfg.lora_alpha}, dropout={cfg.lora_dropout}, target modules {cfg.target_modules}

Load it with `PeftModel.from_pretrained(base_model, "<this directory>")`.

## Last metrics (step {last_metrics.get("step", "-")})

| metric | value |
|---|---|
{rows}
"""


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _empty_target(what: str, out_dir: str | Path) -> Path:
    """``out_dir``, refused when it holds anything (an export never overwrites files); checked before
    anything is read, created by what writes into it (so a refused export leaves no directory behind)."""
    target = Path(out_dir)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(what, str(target), "a new or empty directory: an export never overwrites files")
    return target
