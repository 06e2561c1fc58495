"""The drop-in for a TRL script of one's own: TRL's ``GRPOTrainer`` as the user built it (their
model, ``GRPOConfig``, dataset, reward functions and ``peft_config``), training exactly as TRL does,
with the workbench recording each step into a run directory that its widgets, ``workbench report``
and the follower open, live or afterwards:

    from workbench.integrations.trl import WorkbenchGRPOTrainer    # instead of trl's GRPOTrainer
    trainer = WorkbenchGRPOTrainer(model=..., reward_funcs=[...], args=GRPOConfig(...),
                                   train_dataset=..., peft_config=LoraConfig(...), run_dir="runs/mine")

TRL's generation, rewards, advantages, loss and checkpoints are untouched. After TRL has sampled
and scored a step, one extra forward pass without gradients (the model in eval mode, the random
state put back) scores the sampled tokens for their log-probs, entropies and top-5 alternatives;
the main process writes the rollouts and, at each of TRL's logs, one metrics row: the workbench's
columns from the rollouts and TRL's own numbers beside them under TRL's names. config.yaml records
what a RunConfig can say of the run (task ``external:...``: nothing here can sample it again);
backend.json records every GRPOConfig field.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, cast

import pandas as pd
import torch
import trl
from accelerate.utils import gather_object
from transformers import PreTrainedTokenizerBase
from trl import GRPOTrainer

from workbench import core, methods, step, tasks
from workbench.config import OPTIONS, ConfigError, RunConfig
from workbench.integrations import trl_rows
from workbench.integrations.trl_engine import WorkbenchGRPOTrainer
from workbench.metrics import registry as M
from workbench.models.policy import LoraSettings, Policy
from workbench.run.store import RunStore
from workbench.run.writer import RunWriter
from workbench.step.batch import RolloutBatch

ENGINE = "trl-script"  # backend.json: a run trained by a TRL script of the user's own
SAME_NAME = (
    "seed num_generations max_completion_length temperature top_p learning_rate weight_decay max_grad_norm "
    "num_iterations gradient_accumulation_steps loss_type scale_rewards epsilon epsilon_high beta"
).split()


class RecordingGRPOTrainer(WorkbenchGRPOTrainer):
    """``WorkbenchGRPOTrainer(model, reward_funcs, args, train_dataset, ..., run_dir=...)``: TRL's
    GRPOTrainer with TRL's own arguments, recorded into ``run_dir``. With ``method="grpo"`` the
    training is TRL's, unchanged. Another workbench method (``method_options`` its options) takes
    over the advantages and the loss, on TRL's samples and the user's rewards; the methods that
    sample in phases of their own (EEPO, Policy Split) run through ``workbench train --backend trl``."""

    def __init__(
        self,
        model,
        reward_funcs=None,
        args=None,
        train_dataset=None,
        *,
        run_dir,
        method: str = "grpo",
        method_options: dict | None = None,
        **trl_kwargs,
    ):
        if methods.get(method).samples_on_its_own():
            raise ConfigError(
                "method",
                method,
                "a method that trains on TRL's samples in a script of your own; it samples in phases of "
                "its own, with the workbench's tasks: run it with workbench train --backend trl",
            )
        GRPOTrainer.__init__(self, model, reward_funcs, args, train_dataset, **trl_kwargs)
        self.own_sampling, self.resume_from, self.resume_step = False, None, None
        self.trains_as_trl = method == "grpo"
        unwrapped = self.accelerator.unwrap_model(self.model)
        choice = {"method": method, "method_options": method_options or {}}
        g = int(self.num_generations or 0)  # TRL's, for training
        self.cfg = recorded_config(unwrapped, self.args, g, trl_kwargs.get("peft_config"), choice)
        self.method, self.settings = methods.get(method)(self.cfg), {}
        if not self.trains_as_trl:
            self.settings = self.method.loss_settings()
            whole_groups(self.args, g, method)
        # a processor's tokenizer, or the tokenizer itself
        tokenizer = cast(PreTrainedTokenizerBase, getattr(self.processing_class, "tokenizer", self.processing_class))
        self.policy = Policy(unwrapped, tokenizer, self.cfg.model, lora_of(self.cfg))
        self.run_store = RunStore(run_dir)
        self.records: list[dict] = []
        self._pending: dict | None = None
        self._step_open = False
        self._loss_numbers = torch.zeros(4)  # kept by the workbench's loss; TRL's numbers are read instead
        self._mismatch = core.no_mismatch_totals()
        self.writer: RunWriter | None = None
        if self.args.logging_steps != 1:
            warnings.warn(
                f"GRPOConfig.logging_steps={self.args.logging_steps}: the run directory gets a metrics row "
                "at each of TRL's logs; logging_steps=1 gives one a step",
                stacklevel=2,
            )
        if self.accelerator.is_main_process:
            self.writer = RunWriter.claim(run_dir)
            try:
                self.writer.start(self.cfg, backend=backend_info(self))
            except BaseException:
                self.writer.close()
                raise

    # --- TRL's training, untouched --------------------------------------------------------------
    def train(self, *args, **kwargs):
        try:
            return GRPOTrainer.train(self, *args, **kwargs)
        finally:
            if self.writer is not None:
                self.writer.close()

    def _tokenize_prompts(self, prompts: list):
        return GRPOTrainer._tokenize_prompts(self, prompts)

    def _compute_loss(self, model, inputs):
        if self.trains_as_trl:
            self.settings = self.trl_loss_settings()
            return GRPOTrainer._compute_loss(self, model, inputs)
        return super()._compute_loss(model, inputs)  # the method's loss (trl_engine)

    def _save_checkpoint(self, model, trial) -> None:
        GRPOTrainer._save_checkpoint(self, model, trial)

    # --- the recording --------------------------------------------------------------------------
    def _generate_and_score_completions(self, inputs):
        started = time.perf_counter()
        out = GRPOTrainer._generate_and_score_completions(self, inputs)
        if not self.model.training:  # TRL's evaluation batches are not training steps
            return out
        self._step_open = True
        batch, first_group = self._recorded_batch(inputs, out)
        numbers: dict = {}
        if self.trains_as_trl:
            batch.advantages = out["advantages"].detach().float().cpu().reshape(len(batch), -1)[:, 0]
        else:  # the method's advantages and loss inputs, on TRL's samples and the user's rewards
            out = self.method_inputs(batch, out)
        step.finish_rollouts(batch, self.cfg)
        if not self.trains_as_trl:
            numbers = self.method.extra_metrics(self, batch)
        self.records.append(numbers)
        frame = batch.to_frame(self.step_index, self.policy.tokenizer)
        frame = frame.assign(group=frame["group"] + first_group, process=self.accelerator.process_index)
        frames, numbers_of_processes = gather_object([frame]), gather_object([numbers])
        if self.accelerator.is_main_process:
            self._pending = {"frames": frames, "numbers": numbers_of_processes, "started": started}
        return out

    def _recorded_batch(self, inputs: list[dict], out: dict) -> tuple[RolloutBatch, int]:
        """This process's rows with their telemetry and TRL's rewards, and its first group's number;
        the scoring pass changes nothing TRL computes next (no gradients, dropout off, the random
        state put back)."""
        g, rows = self.cfg.num_generations, len(inputs)
        first_row = self.accelerator.process_index * rows  # in TRL's gathered, process-major order
        first_group, last_group = first_row // g, (first_row + rows - 1) // g
        groups = range(first_group, last_group + 1)
        problems = [_problem(inputs[max(0, k * g - first_row)]["prompt"], k) for k in groups]
        training = self.policy.model.training
        with torch.random.fork_rng(devices=[]):
            self.policy.model.eval()
            try:
                batch = trl_rows.rollout_batch(out, problems, self.policy, self.cfg, self.autocast(), first_row)
            finally:
                self.policy.model.train(training)
        rewards = self._step_rewards()[first_row : first_row + rows]
        batch.rewards = rewards
        batch.answers = [None] * rows
        batch.strategies = [" ".join(t.split()) for t in batch.text]  # distinct responses stand in for strategies
        batch.parsed = torch.ones(rows, dtype=torch.bool)
        return batch, first_group

    def _step_rewards(self) -> torch.Tensor:
        """Every process's rewards of the step, as TRL weighed them (its logged per-function rewards)."""
        logs: dict = self._logs
        rows = len(logs["advantages"])
        per_function = torch.tensor([list(logs["rewards"][n])[-rows:] for n in self.reward_func_names]).T
        weights = self.reward_weights.cpu().float()
        return (per_function.float() * weights).nansum(dim=1)

    def join_frames(self, frames: list[pd.DataFrame]) -> pd.DataFrame:
        return pd.concat(frames, ignore_index=True)  # group numbers are TRL's, across the processes

    def trl_loss_settings(self) -> dict:
        """The coefficients TRL's loss applies in this step: ``beta`` and the entropy bonus's, which
        TRL's adaptive entropy control (``use_adaptive_entropy``) sets from the step before, as its
        ``_compute_loss`` does."""
        args: Any = self.args  # a GRPOConfig: TRL 1.16's adaptive entropy fields
        coef = float(getattr(self, "entropy_coef", 0.0) or 0.0)
        if getattr(self, "use_adaptive_entropy", False) and self._last_world_entropy > args.entropy_target:
            coef = 0.0
        return {"beta": float(args.beta), "entropy_coef": coef}

    def logged_numbers(self, logs: dict) -> dict[str, float]:
        """TRL's own numbers of the log under their TRL names (``reward``, ``entropy``,
        ``frac_reward_zero_std``, ...), as ``workbench import --format trl`` keeps them, each also
        under the registry's name where TRL's measures the same thing (``M.TRL_NAMES``)."""
        numbers = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}
        return {**numbers, **{ours: numbers[theirs] for theirs, ours in M.TRL_NAMES.items() if theirs in numbers}}

    def update_numbers(self, logs: dict) -> dict[str, float]:
        """TRL's own numbers of the logged steps (the loss, the gradient norm, its clip ratio and KL),
        or, when a workbench method trains, the sums its loss kept."""
        if not self.trains_as_trl:
            return super().update_numbers(logs)
        clipped = float(logs.get("clip_ratio/region_mean", 0.0))
        kl = logs.get("kl")
        return step.update_numbers(
            float(logs["loss"]),
            clipped,
            1.0,
            float(kl) if kl is not None else 0.0,
            1.0 if kl is not None else 0.0,
            float(logs.get("grad_norm", "nan")),
            skipped=False,
        )


def _problem(prompt, index: int) -> tasks.Problem:
    """A group's prompt as the workbench shows it: the text, or a conversation's turns joined."""
    if isinstance(prompt, list):
        prompt = "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in prompt)
    return tasks.Problem(str(index), str(prompt))


def recorded_config(model, args, num_generations: int, peft_config, choice: dict) -> RunConfig:
    """What a RunConfig can say of the user's run: the GRPOConfig fields it shares, and the method
    ``choice``. Recording TRL's GRPO, a value RunConfig does not allow is left at its default
    (backend.json keeps every field as TRL had it); a workbench method's loss reads these fields,
    so there such a value is refused by name."""
    name = getattr(model.config, "_name_or_path", "") or "model"
    fields: dict = {"model": name, "task": "external:trl-script", **choice}
    for key in SAME_NAME:
        if getattr(args, key, None) is not None:
            fields[key] = getattr(args, key)
    fields["num_generations"] = num_generations
    fields["num_prompts"] = max(1, args.generation_batch_size // num_generations)
    fields["top_k"] = args.top_k or 0
    if peft_config is not None:
        fields.update(lora_r=peft_config.r, lora_alpha=peft_config.lora_alpha, lora_dropout=peft_config.lora_dropout)
        if peft_config.target_modules:
            modules = peft_config.target_modules
            fields["target_modules"] = modules if isinstance(modules, str) else sorted(modules)
    if choice["method"] != "grpo":
        for key in SAME_NAME:
            if key in fields and not _allowed(key, fields[key]):
                allowed = f"{OPTIONS[key].allowed()} for method {choice['method']!r}, whose loss reads it"
                raise ConfigError(f"GRPOConfig.{key}", fields[key], allowed)
        return RunConfig(**fields)
    return RunConfig(**{k: v for k, v in fields.items() if _allowed(k, v)})


def _allowed(field: str, value) -> bool:
    try:
        OPTIONS[field].check(value)
    except (ConfigError, TypeError, ValueError):
        return False
    return True


def whole_groups(args, num_generations: int, method: str) -> None:
    """A workbench method computes a group's advantages where the group is: each process's share of
    a generation batch must hold whole groups."""
    rows = args.per_device_train_batch_size * args.steps_per_generation
    if rows % num_generations:
        raise ConfigError(
            "GRPOConfig.per_device_train_batch_size",
            args.per_device_train_batch_size,
            f"a value whose rows a generation (x steps_per_generation={args.steps_per_generation}) are a "
            f"multiple of num_generations={num_generations} for method {method!r}: each process then "
            "holds whole groups",
        )


def lora_of(cfg: RunConfig) -> LoraSettings:
    return LoraSettings(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules)


def backend_info(trainer: RecordingGRPOTrainer) -> dict:
    """backend.json of a recorded TRL script: the engine, its processes, versions and every GRPOConfig field."""
    return {
        "backend": ENGINE,
        "processes": trainer.accelerator.num_processes,
        "versions": {"trl": trl.__version__},
        "grpo_config": {k: v for k, v in trainer.args.to_dict().items() if _jsonable(v)},
        "reward_funcs": list(trainer.reward_func_names),
        "run_dir": str(Path(trainer.run_store.dir).resolve()),
    }


def _jsonable(value) -> bool:
    return (
        value is None
        or isinstance(value, (bool, int, float, str))
        or (isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float, str)) for v in value))
    )
