"""Trainer: a step is a sequence of named phases; run, step, stop, evaluate, resume.

``phases()`` yields a ``Phase`` event after each phase of one step and does the work in
between, so a notebook can stop between phases and look. ``step()`` runs them all. If a
step is interrupted (an exception, a KeyboardInterrupt, or the generator closed early)
the adapter and the optimizer are exactly as they were before it.

Every step is seeded from ``(seed, step)`` alone: the prompts and the sampling stream of
step N never depend on what ran before, which makes resume exact.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import torch

from . import core, evaluation, methods, metrics, tasks, update
from .batch import RolloutBatch
from .config import ConfigError, RunConfig
from .events import Phase, StepResult
from .policy import LoraSettings, Policy, PolicyLoadError
from .sampling import Sampler
from .store import Checkpoint, CheckpointError, RunStore


class Trainer:
    def __init__(
        self,
        cfg: RunConfig | None = None,
        policy: Policy | None = None,
        task: tasks.Task | None = None,
        reward_funcs: Callable | list[Callable] | None = None,
        out_dir: str | Path | None = None,
        reward_errors: str = "raise",
        **overrides,
    ):
        cfg = (cfg or RunConfig()).replace(**overrides) if overrides else (cfg or RunConfig())
        cfg.validate()  # a config's fields can be reassigned after it was built
        store = RunStore(out_dir) if out_dir is not None else None
        if store is not None and store.holds_run():  # before any work: a wrong out_dir fails at once
            raise ConfigError("out_dir", str(store.dir), "a directory that holds no run yet; continue this "
                              f"one with Trainer.resume({str(store.dir)!r})")
        self.cfg = cfg
        self.device = _device(cfg.device)
        if self.device.type == "cpu":
            torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
        self.autocast_dtype = _autocast_dtype(cfg.dtype, self.device)
        self.policy = policy or Policy.from_pretrained(
            cfg.model,
            lora=LoraSettings(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules),
            device=self.device,
            seed=cfg.seed,
        )
        if cfg.gradient_checkpointing:
            self.policy.model.gradient_checkpointing_enable()
            self.policy.model.enable_input_require_grads()
        self.task = task or _task(cfg.task)
        if reward_funcs is not None:
            self.task = tasks.RewardFunctionTask(self.task, reward_funcs, reward_errors=reward_errors)
        self.method = methods.get(cfg.method)(cfg)
        self.optimizer = torch.optim.AdamW(
            list(self.policy.trainable_parameters().values()), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
        )
        tok = self.policy.tokenizer
        self.sampler = Sampler(self.policy.model, tok.eos_token_id, tok.pad_token_id)
        self.step_index = 0
        self.nan_skips = 0
        self.last_batch: RolloutBatch | None = None
        self._history: list[dict] = []
        self._subscribers: list[Callable[[Phase], None]] = []
        self._stop = False
        self._step_open = False  # a phases() generator is part-way through a step
        self.store = store
        if store is not None:
            store.create(cfg)

    # --- events -------------------------------------------------------------------------
    def subscribe(self, callback: Callable[[Phase], None]) -> Callable[[], None]:
        """Call ``callback(phase)`` after every phase; returns a function that unsubscribes."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def _emit(self, phase: Phase) -> Phase:
        for callback in list(self._subscribers):
            callback(phase)
        return phase

    # --- the shared stages ------------------------------------------------------------------
    def _seed(self, *parts: int) -> int:
        return core.derive_seed(self.cfg.seed, *parts)

    def generator(self, *parts: int) -> torch.Generator:
        return torch.Generator(self.device).manual_seed(self._seed(*parts))

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def token_logprobs(self, prompt_ids: list[list[int]], ids: torch.Tensor, adapter="policy", grad: bool = False,
                       with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs [N, T] (float32) of ``ids`` after ``prompt_ids``, and their
        entropies when asked: THE way every method and the update score tokens. ``adapter``:
        "policy" (the current adapter), "reference" (adapter off) or a dict of moved adapter
        tensors (EEPO's unlearned policy); the config's temperature and autocast apply; a graph
        is kept only with ``grad=True``."""
        if adapter == "policy":
            weights = contextlib.nullcontext()
        elif adapter == "reference":
            weights = self.policy.reference()
        else:
            weights = self.policy.swapped_adapter(adapter)
        with (contextlib.nullcontext() if grad else torch.no_grad()), weights, self.autocast():
            logp, entropy = self.policy.token_logprobs(prompt_ids, ids, self.cfg.temperature, with_entropy=with_entropy)
        return logp.float(), None if entropy is None else entropy.float()

    def sample_group(
        self,
        problems: list[tasks.Problem],
        num_generations: int,
        system: str | None = None,
        mode: str = "normal",
        stage: int = 1,
        generator: torch.Generator | None = None,
    ) -> RolloutBatch:
        """Sample ``num_generations`` responses per problem with the current adapter, after an
        optional ``system`` prompt (Policy Split's high-entropy mode)."""
        prompt_ids = self.policy.format_prompts([p.prompt for p in problems], system)
        self.policy.model.eval()
        with self.autocast():
            samples = self.sampler.generate(
                prompt_ids,
                num_generations,
                max_new_tokens=self.cfg.max_completion_length,
                temperature=self.cfg.temperature,
                top_k=self.cfg.top_k or None,
                top_p=self.cfg.top_p,
                generator=generator or self.generator(self.step_index, stage, len(mode)),
            )
        texts = self.policy.decode(samples.ids, samples.mask)
        return RolloutBatch.from_samples(problems, prompt_ids, samples, texts, num_generations, mode, stage)

    def score(self, batch: RolloutBatch) -> int:
        """Fill the batch's rewards, answers and strategies; return how many reward-function
        failures were scored 0 (``reward_errors="zero"``; the default mode raises instead)."""
        problems = [batch.problems[g] for g in batch.group.tolist()]
        failures_before = getattr(self.task, "error_count", 0)
        scores = tasks.score_batch(self.task, problems, batch.text)
        batch.rewards = torch.tensor([s.reward for s in scores], dtype=torch.float32, device=batch.ids.device)
        batch.answers = [s.answer for s in scores]
        batch.strategies = [s.strategy for s in scores]
        batch.parsed = torch.tensor([s.parsed for s in scores], dtype=torch.bool)
        return getattr(self.task, "error_count", 0) - failures_before

    def train_problems(self) -> list[tasks.Problem]:
        return self.task.prompts("train", self.cfg.num_prompts, seed=self._seed(self.step_index, 7))

    # --- one step ---------------------------------------------------------------------------
    def phases(self) -> Iterator[Phase]:
        """Run one step, yielding a ``Phase`` after each named phase. One step at a time: starting
        a second while one is part-way (another widget's or cursor's) raises RuntimeError."""
        if self._step_open:
            raise RuntimeError("a step of this trainer is already part-way through (a widget or StepCursor holds it): "
                               "finish it or discard it first")
        self._step_open = True
        started = time.perf_counter()
        adapter, optimizer_state = self.policy.adapter_state(), copy.deepcopy(self.optimizer.state_dict())
        nan_skips = self.nan_skips
        committed = False
        try:
            batch = yield from self._emitting(self.method.sample(self, self.train_problems()))
            reward_errors = self.score(batch)
            yield self._emit(Phase("score", self.step_index, batch, {"reward_mean": float(batch.rewards.mean()),
                                                                     "reward_errors": reward_errors}))
            numbers = self.method.advantages(self, batch)
            yield self._emit(Phase("advantage", self.step_index, batch, numbers))
            numbers = update.update(self, batch)
            yield self._emit(Phase("update", self.step_index, batch, numbers))
            step_metrics = self._metrics(batch, numbers, time.perf_counter() - started, reward_errors)
            self._record(batch, step_metrics)
            committed = True  # in metrics.jsonl and the history: from here on the step has happened
            self._checkpoint_if_due()
            yield self._emit(Phase("metrics", step_metrics["step"], batch, step_metrics))
        finally:
            self._step_open = False
            if not committed:
                self.policy.load_adapter_state(adapter)
                self.optimizer.load_state_dict(optimizer_state)
                self.nan_skips = nan_skips

    def _emitting(self, inner):
        """Forward the phases a method yields to subscribers; return the method's result.

        Closing this generator closes the method's at once, so its ``finally`` blocks (EEPO's
        adapter restore) run now, not whenever the garbage collector gets to them."""
        try:
            while True:
                try:
                    phase = next(inner)
                except StopIteration as done:
                    return done.value
                yield self._emit(phase)
        finally:
            inner.close()

    def step(self) -> StepResult:
        for phase in self.phases():
            pass
        return StepResult(phase.step, phase.numbers, phase.batch)

    def run(self, steps: int, progress: bool = True, label: str | None = None) -> pd.DataFrame:
        """Train ``steps`` steps (or until ``stop()``), with a progress bar labelled by the method
        and ``label`` (which run this is: a branch, a sweep point); returns the history."""
        from tqdm.auto import tqdm

        self._stop = False
        desc = self.cfg.method if label is None else f"{self.cfg.method} · {label}"
        with tqdm(total=steps, desc=desc, disable=not progress) as bar:
            for _ in range(steps):
                if self._stop:
                    break
                result = self.step()
                bar.update(1)
                bar.set_postfix(reward=f"{result.metrics['reward_mean']:.2f}",
                                entropy=f"{result.metrics['entropy_mean']:.3f}")
        if self.store is not None:
            self.save_checkpoint()
        return self.history

    def stop(self) -> None:
        """Ask ``run`` to stop after the current step."""
        self._stop = True

    # --- metrics ------------------------------------------------------------------------------
    def _metrics(self, batch: RolloutBatch, update_numbers: dict, seconds: float, reward_errors: int = 0) -> dict[str, float]:
        batch.pivots = metrics.find_pivots(batch.entropy, batch.mask, self.cfg.pivot_z_threshold, group=batch.group)
        if batch.gate is None:
            batch.gate = torch.ones_like(batch.entropy)
        rewards = batch.grouped(batch.rewards)
        groups = [rows.tolist() for rows in batch.group_rows()]
        out = {
            "step": self.step_index,
            "reward_mean": float(batch.rewards.mean()),
            "reward_std": float(batch.rewards.std(correction=0)),
            "accuracy": float(tasks.is_success(batch.rewards).float().mean()),  # as evaluate() counts
            "zero_spread_groups": float((rewards.max(-1).values == rewards.min(-1).values).float().mean()),
            "parsed_fraction": float(batch.parsed.float().mean()),
            **metrics.entropy_stats(batch.entropy, batch.mask),
            "response_length": float(batch.response_lengths().mean()),
            **metrics.group_diversity(groups, batch.answers, batch.strategies, batch.rewards.tolist()),
            **metrics.pivot_stats(batch.entropy, batch.mask, batch.pivots),
            **update_numbers,
            "nan_skips": float(self.nan_skips),
            # reward-function failures scored 0 in this step (reward_errors="zero")
            "reward_errors": float(reward_errors),
            "learning_rate": self.optimizer.param_groups[0]["lr"],
            **self.method.extra_metrics(self, batch),
            "step_time": seconds,
        }
        return out

    def _record(self, batch: RolloutBatch, step_metrics: dict) -> None:
        """Commit a finished step. The metrics line is written last of the files: a failure before
        it leaves no trace of the step (its rollouts file is rewritten when the step runs again)."""
        if self.store is not None:
            if self.cfg.save_rollouts:
                self.store.write_rollouts(self.step_index, batch.to_frame(self.step_index, self.policy.tokenizer))
            self.store.append_metrics(step_metrics)
        self.last_batch = batch
        self._history.append(step_metrics)
        self.step_index += 1

    def _checkpoint_if_due(self) -> None:
        if self.store is not None and self.cfg.checkpoint_every and self.step_index % self.cfg.checkpoint_every == 0:
            self.save_checkpoint()

    @property
    def history(self) -> pd.DataFrame:
        """One row per finished step: every metric the trainer and the method recorded."""
        return pd.DataFrame(self._history)

    @property
    def records(self) -> list[dict]:
        """The per-step metric dicts behind ``history``, without building a DataFrame."""
        return list(self._history)

    # --- evaluation -----------------------------------------------------------------------------
    def evaluate(self, split: str = "test", k=None, n_samples: int = 16, num_prompts: int = 64,
                 max_batch: int = 256, progress: bool = False, mode: str = "normal") -> dict[str, float]:
        """pass@k, entropy and diversity of this policy on a split (``workbench.evaluation.evaluate``)."""
        return evaluation.evaluate(self, split, k, n_samples, num_prompts, max_batch, progress, mode)

    # --- changing course ----------------------------------------------------------------------
    def set_live(self, **changes) -> RunConfig:
        """Change hyperparameters that are safe to change between steps (``LIVE_FIELDS``); they act
        from the next step. ``method_options`` given here are merged into the current ones. A run
        directory's config.yaml is rewritten, so a resumed run carries on with the new values."""
        fixed = sorted(set(changes) - set(LIVE_FIELDS))
        if fixed:
            raise ConfigError(fixed[0], changes[fixed[0]],
                              f"a field that can change mid-run ({', '.join(LIVE_FIELDS)}); fork the run to change it")
        if "method_options" in changes:
            changes["method_options"] = {**self.cfg.method_options, **changes["method_options"]}
        cfg = self.cfg.replace(**changes)  # validates the whole config, method options included
        self.cfg = self.method.cfg = cfg
        self.method.options = {**self.method.defaults, **cfg.method_options}
        self._apply_optimizer_settings()
        if self.store is not None:
            self.store.write_config(cfg)
        return cfg

    def _apply_optimizer_settings(self) -> None:
        """The config decides the optimizer's settings, also after a state dict (which carries
        the parent's or the checkpoint's) was loaded."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.learning_rate
            group["weight_decay"] = self.cfg.weight_decay

    def fork(self, out_dir: str | Path | None = None, **changes) -> "Trainer":
        """A new run that starts from this one's adapter, optimizer state and step, with any
        config ``changes`` (all fields, not only live ones): a branch to compare against. Every
        field it accepts takes effect (a new task is built; the optimizer takes the new learning
        rate and weight decay); those that would change the model or the adapter's shape are
        refused."""
        cfg = self.cfg.replace(**changes)
        rebuild = [f for f in FORK_REFUSES if getattr(cfg, f) != getattr(self.cfg, f)]
        if rebuild:
            raise ConfigError(rebuild[0], getattr(cfg, rebuild[0]), "the parent's value: a fork keeps the model and "
                              f"adapter shape ({', '.join(FORK_REFUSES)}); start a new run to change it")
        policy = copy.deepcopy(self.policy)
        if self.cfg.gradient_checkpointing and not cfg.gradient_checkpointing:
            policy.model.gradient_checkpointing_disable()
        task = self.task if cfg.task == self.cfg.task else None  # None: the branch builds its own
        branch = Trainer(cfg, policy=policy, task=task, out_dir=out_dir)
        branch.optimizer.load_state_dict(self.optimizer.state_dict())
        branch._apply_optimizer_settings()
        branch.step_index, branch.nan_skips = self.step_index, self.nan_skips
        branch._history = [dict(r) for r in self._history]
        if branch.store is not None:
            for record in branch._history:
                branch.store.append_metrics(record)
        return branch

    # --- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        if self.store is None:
            raise ValueError("this trainer has no run directory: pass out_dir= to save checkpoints")
        return self.store.save_checkpoint(self.step_index, self.policy, self.optimizer, {"nan_skips": self.nan_skips})

    @classmethod
    def resume(cls, run_dir: str | Path, **kwargs) -> "Trainer":
        """Continue a run from its latest checkpoint, exactly as if it had not stopped.

        The checkpoint is read and checked before anything is applied or written: a missing,
        truncated or corrupt file raises CheckpointError naming it, and the run directory is
        left as it was. Metrics of steps after the checkpoint are dropped (they run again)."""
        store = RunStore(run_dir)
        cfg = store.config()
        checkpoint = store.load_checkpoint()
        trainer = cls(cfg, **kwargs)
        trainer._restore(checkpoint)
        trainer.store = store
        trainer._history = store.truncate_metrics(checkpoint.step - 1)
        return trainer

    def _restore(self, checkpoint: Checkpoint) -> None:
        """Load a checked checkpoint into this trainer; a file that does not fit the model is named."""
        try:
            self.policy.load_adapter_state(checkpoint.adapter)
        except (PolicyLoadError, RuntimeError) as error:
            raise CheckpointError(f"checkpoint file {checkpoint.path / 'adapter.safetensors'} does not fit this "
                                  f"model and adapter: {error}") from error
        try:
            self.optimizer.load_state_dict(checkpoint.optimizer)
            torch.set_rng_state(checkpoint.torch_rng)
        except (ValueError, KeyError, RuntimeError) as error:
            raise CheckpointError(f"checkpoint file {checkpoint.path / 'optimizer.pt'} does not fit this "
                                  f"adapter: {error}") from error
        self._apply_optimizer_settings()  # config.yaml decides: set_live rewrites it
        self.step_index = checkpoint.step
        self.nan_skips = checkpoint.state.get("nan_skips", 0)


# RunConfig fields a fork cannot change: they shape the model and the adapter it copies
FORK_REFUSES = ("model", "lora_r", "lora_alpha", "lora_dropout", "target_modules", "device", "dtype")

# RunConfig fields a running trainer can change between steps (Trainer.set_live); the others
# shape what was built (model, adapter, batch layout, method) and need a fork.
LIVE_FIELDS = ("learning_rate", "temperature", "top_p", "top_k", "entropy_coef", "beta", "epsilon", "epsilon_high",
               "max_grad_norm", "top_entropy_quantile", "pivot_z_threshold", "method_options")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return None if name == "float32" else getattr(torch, name)


def _task(name: str) -> tasks.Task:
    if name in tasks.names() or name.startswith(tasks.REASONING_GYM_PREFIX):
        return tasks.get(name)
    return tasks.DatasetTask.from_file(name)
