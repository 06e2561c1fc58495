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

from . import budget, core, evaluation, methods, metrics, models, tasks, update
from .batch import RolloutBatch
from .config import ConfigError, RunConfig
from .events import Phase, StepResult
from .policy import LoraSettings, Policy
from .sampling import Sampler
# LIVE_FIELDS and FORK_REFUSES say what set_live and fork accept: workbench.trainer.LIVE_FIELDS is their public name
from .lifecycle import FORK_REFUSES, LIVE_FIELDS, RunLifecycle, claim_run_directory  # noqa: F401
from .store import RunStore


class Trainer(RunLifecycle):
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
        if cfg.task not in tasks.names() and Path(cfg.task).is_file():  # a resume from elsewhere finds it too
            cfg = cfg.replace(task=str(Path(cfg.task).resolve()))
        store = claim_run_directory(out_dir) if out_dir is not None else None  # before any work: a wrong out_dir fails at once
        try:
            self._build(cfg, policy, task, reward_funcs, reward_errors)
        except BaseException:
            if store is not None:
                store.unlock()
            raise
        self.store = None
        if store is not None:
            self._start_run(store)

    def _build(self, cfg, policy, task, reward_funcs, reward_errors) -> None:
        self.cfg = cfg
        self.device = _device(cfg.device)
        if self.device.type == "cpu":
            torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
        self.autocast_dtype = _autocast_dtype(cfg.dtype, self.device)
        self.policy = policy or self._load_policy(cfg)
        if cfg.gradient_checkpointing:
            # non-reentrant: keys and values a pass hands to the next (prefix_attention) keep their graph
            self.policy.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.task = task or tasks.from_config(cfg.task)
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

    def _load_policy(self, cfg: RunConfig) -> Policy:
        model, tokenizer = models.load(cfg.model, device=self.device)
        budget.check_memory(cfg, model, self.device)  # before the adapter and anything else is allocated
        lora = LoraSettings(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules)
        return Policy.with_adapter(model, tokenizer, cfg.model, lora, seed=cfg.seed)

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
                       with_entropy: bool = False, with_complement: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs [N, T] (float32) of ``ids`` after ``prompt_ids``, and their
        entropies or their log(1 - p) when asked: THE way every method and the update score tokens. ``adapter``:
        "policy" (the current adapter), "reference" (adapter off) or a dict of moved adapter
        tensors (EEPO's unlearned policy); the config's temperature and autocast apply; a graph
        is kept only with ``grad=True``."""
        with (contextlib.nullcontext() if grad else torch.no_grad()), self.policy.adapter(adapter), self.autocast():
            logp, second = self.policy.token_logprobs(prompt_ids, ids, self.cfg.temperature, with_entropy=with_entropy,
                                                      with_complement=with_complement)
        return logp.float(), None if second is None else second.float()

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
        budget.check_context(self.policy.model, prompt_ids, self.cfg.max_completion_length)
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
        if not torch.isfinite(batch.rewards).all():  # e.g. 1e308, finite in Python, inf in float32
            row = int((~torch.isfinite(batch.rewards)).nonzero()[0])
            raise tasks.RewardFunctionError(
                f"reward {scores[row].reward!r} of response {row} ({batch.text[row][:80]!r}) is not a finite "
                "float32 number (|r| < 3.4e38): scale the rewards down")
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
        try:
            with tqdm(total=steps, desc=desc, disable=not progress) as bar:
                for _ in range(steps):
                    if self._stop:
                        break
                    result = self.step()
                    bar.update(1)
                    bar.set_postfix(reward=f"{result.metrics['reward_mean']:.2f}",
                                    entropy=f"{result.metrics['entropy_mean']:.3f}")
        except BaseException:  # Ctrl-C, a crash: the unfinished step is undone; keep the finished ones
            self._save_on_the_way_out()
            raise
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
        out = {
            "step": self.step_index,
            **metrics.rollout_metrics(batch),
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

def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    usable = {"cpu": True, "cuda": torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count(),
              "mps": torch.backends.mps.is_available()}.get(device.type, False)
    if not usable:
        have = ", ".join(["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
                         + (["mps"] if torch.backends.mps.is_available() else []))
        raise ConfigError("device", name, f"a device this machine has: auto, {have} (the gpu preset needs a CUDA GPU)")
    return device


def _autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return None if name == "float32" else getattr(torch, name)
