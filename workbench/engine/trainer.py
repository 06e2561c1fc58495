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
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch

from workbench import core, methods, step, tasks
from workbench.config import RunConfig
from workbench.engine import devices, evaluation, lifecycle, update

# LIVE_FIELDS and FORK_REFUSES: what set_live and fork accept (public as workbench.engine.trainer.LIVE_FIELDS)
from workbench.engine.lifecycle import FORK_REFUSES, LIVE_FIELDS  # noqa: F401
from workbench.metrics import registry as M
from workbench.models.policy import Policy
from workbench.models.sampling import Sampler
from workbench.run.store import RunStore
from workbench.run.writer import RunWriter
from workbench.step.batch import RolloutBatch
from workbench.step.events import Phase, StepResult

if TYPE_CHECKING:
    from workbench.step.context import StepContext


class Trainer(step.ScoresTokens):
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
        writer = (
            RunWriter.claim(out_dir) if out_dir is not None else None
        )  # before any work: a wrong out_dir fails at once
        try:
            self._build(cfg, policy, task, reward_funcs, reward_errors)
        except BaseException:
            if writer is not None:
                writer.close()
            raise
        self.writer: RunWriter | None = None  # the run directory this trainer writes, if any
        if writer is not None:
            self.start_run(writer)

    def _build(self, cfg, policy, task, reward_funcs, reward_errors) -> None:
        self.device = devices.device(cfg.device)
        if self.device.type == "cpu":
            torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
        self.cfg = cfg = devices.chosen_precision(cfg, self.device)  # "auto": this machine's choice, recorded so
        self.autocast_dtype = devices.autocast_dtype(cfg.dtype)
        # in half precision the frozen base is stored in it; the adapter stays float32
        self.policy = policy or Policy.for_run(cfg, device=self.device, dtype=self.autocast_dtype)
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
        # where the open step started (adapter, optimizer state, NaN skips) until it is on record: the
        # step boundary a fork branches from; None between steps and once the step is committed
        self._step_start: tuple | None = None
        self._waiting_changes: dict = {}  # set_live changes made during an open step: they act from the next
        self.live_change_acts_from: int | None = None  # the step the last set_live's changes act from
        self._boundary = threading.Lock()  # a step's start and a live change, one at a time (widget threads)

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

    # --- the StepContext an engine offers its method (workbench.step) ------------------------
    def sample_group(
        self,
        problems: list[tasks.Problem],
        num_generations: int,
        system: str | None = None,
        mode: str = "normal",
        stage: int = 1,
        generator: torch.Generator | None = None,
    ) -> RolloutBatch:
        """``step.sample_group`` with this trainer's sampler: ``num_generations`` responses per problem
        with the current adapter, after an optional ``system`` prompt (Policy Split's high-entropy mode)."""
        return step.sample_group(
            self, self.sampler, self.autocast(), problems, num_generations, system, mode, stage, generator
        )

    def score(self, batch: RolloutBatch) -> int:
        """``step.score`` with this run's task: the number of reward-function failures scored 0."""
        return step.score(self.task, batch)

    def train_problems(self) -> list[tasks.Problem]:
        return self.task.prompts("train", self.cfg.num_prompts, seed=self._seed(self.step_index, 7))

    # --- one step ---------------------------------------------------------------------------
    def phases(self) -> Iterator[Phase]:
        """Run one step, yielding a ``Phase`` after each named phase. One step at a time: starting
        a second while one is part-way (another widget's or cursor's) raises RuntimeError."""
        with self._boundary:
            if self._step_open:
                raise RuntimeError(
                    "a step of this trainer is already part-way through (a widget or StepCursor holds it): "
                    "finish it or discard it first"
                )
            if self._waiting_changes:  # live changes made during the last step act from this one
                lifecycle.apply_live(self, self._waiting_changes)
                self._waiting_changes = {}
            self._step_open = True
            adapter, optimizer_state = self.policy.adapter_state(), copy.deepcopy(self.optimizer.state_dict())
            nan_skips = self.nan_skips
            self._step_start = (adapter, optimizer_state, nan_skips)
        started = time.perf_counter()
        committed = False
        try:
            batch = yield from self._emitting(self.method.sample(self, self.train_problems()))
            reward_errors = self.score(batch)
            yield self._emit(
                Phase(
                    "score",
                    self.step_index,
                    batch,
                    {M.REWARD_MEAN: float(batch.rewards.mean()), M.REWARD_ERRORS: reward_errors},
                )
            )
            numbers = self.method.advantages(self, batch)
            yield self._emit(Phase("advantage", self.step_index, batch, numbers))
            settings = self.method.loss_settings(batch)  # the coefficients this step's loss uses
            numbers = update.update(self, batch, settings)
            yield self._emit(Phase("update", self.step_index, batch, numbers))
            step_metrics = self._metrics(batch, numbers, settings, time.perf_counter() - started, reward_errors)
            self._record(batch, step_metrics)
            committed = True  # in metrics.jsonl and the history: from here on the step has happened
            self._step_start = None
            if self.writer is not None:
                self.writer.checkpoint_if_due(self.step_index, self.cfg.checkpoint_every, *self._checkpoint_contents())
            yield self._emit(Phase("metrics", int(step_metrics[M.STEP]), batch, step_metrics))
        finally:
            self._step_open = False
            self._step_start = None
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
        *_, last = self.phases()  # every phase; the last, "metrics", carries the step's numbers and batch
        assert last.batch is not None
        return StepResult(last.step, last.numbers, last.batch)

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
                    bar.set_postfix(
                        reward=f"{result.metrics[M.REWARD_MEAN]:.2f}", entropy=f"{result.metrics[M.ENTROPY_MEAN]:.3f}"
                    )
        except BaseException:  # Ctrl-C, a crash: the unfinished step is undone; keep the finished ones
            if self.writer is not None:
                self.writer.save_on_the_way_out(self.step_index, *self._checkpoint_contents())
            raise
        if self.writer is not None:
            self.save_checkpoint()
        return self.history

    def stop(self) -> None:
        """Ask ``run`` to stop after the current step."""
        self._stop = True

    # --- metrics ------------------------------------------------------------------------------
    def _metrics(
        self, batch: RolloutBatch, update_numbers: dict, loss_settings: dict, seconds: float, reward_errors: int = 0
    ) -> dict[str, float]:
        step.finish_rollouts(batch, self.cfg)
        return step.metrics_row(
            self.step_index,
            batch,
            update_numbers,
            self.method.extra_metrics(self, batch),
            cfg=self.cfg,
            loss_settings=loss_settings,
            nan_skips=self.nan_skips,
            reward_errors=reward_errors,
            learning_rate=self.optimizer.param_groups[0]["lr"],
            seconds=seconds,
        )

    def _record(self, batch: RolloutBatch, step_metrics: dict) -> None:
        """Commit a finished step: to the run directory (``RunWriter.record``), then to the history."""
        if self.writer is not None:
            frame = batch.to_frame(self.step_index, self.policy.tokenizer) if self.cfg.save_rollouts else None
            self.writer.record(self.step_index, frame, step_metrics)
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

    # --- the run directory and changes of course (lifecycle.py) -------------------------------------
    @property
    def store(self) -> RunStore | None:
        """The files of the run directory this trainer writes (None: it writes none)."""
        return self.writer.store if self.writer is not None else None

    def start_run(self, writer: RunWriter) -> None:
        """Write a new run directory (claimed by ``writer``) and a checkpoint of where it starts, so
        that it can be resumed whatever happens next."""
        try:
            writer.start(self.cfg, self._history)  # a fork's inherited history too
            self.writer = writer
            self.save_checkpoint()
        except BaseException:
            self.writer = None
            writer.close()
            raise

    def _checkpoint_contents(self) -> tuple:
        return self.policy, self.optimizer, {"nan_skips": self.nan_skips}

    def save_checkpoint(self) -> Path:
        if self.writer is None:
            raise ValueError("this trainer has no run directory: pass out_dir= to save checkpoints")
        return self.writer.checkpoint(self.step_index, *self._checkpoint_contents())

    def close(self) -> None:
        """Let go of the run directory (its writer lock); the trainer no longer writes it."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def set_live(self, **changes) -> RunConfig:
        """Change fields that are safe to change between steps (``LIVE_FIELDS``) at a step boundary:
        now between steps, or, during an open step, when the next one starts (``changes_act_from``);
        config.yaml records them when they act (``lifecycle.set_live``). Returns the config in force
        from then on."""
        return lifecycle.set_live(self, changes)

    @property
    def changes_act_from(self) -> int:
        """The step from which a ``set_live`` made now acts (and from which a ``fork`` made now branches):
        this step when none is open, the next one while a step is part-way."""
        return self.step_index + 1 if self._step_start is not None else self.step_index

    def fork(self, out_dir: str | Path | None = None, **changes) -> Trainer:
        """A branch from this run's adapter, optimizer and step with config ``changes``, taken at the
        last step boundary: during an open step, where that step started (``lifecycle.fork``)."""
        return lifecycle.fork(self, out_dir, changes)

    @classmethod
    def resume(cls, run_dir: str | Path, read_only: bool = False, **kwargs) -> Trainer:
        """Continue a run from its latest checkpoint, exactly (``lifecycle.resume``); ``read_only``:
        its last checkpoint's policy, with nothing locked or written."""
        return lifecycle.resume(cls, run_dir, read_only, kwargs)

    # --- evaluation -----------------------------------------------------------------------------
    def evaluate(
        self,
        split: str = "test",
        k=None,
        n_samples: int = 16,
        num_prompts: int = 64,
        max_batch: int = 256,
        progress: bool = False,
        mode: str = "normal",
    ) -> dict[str, float]:
        """pass@k, entropy and diversity of this policy on a split (``workbench.engine.evaluation.evaluate``)."""
        return evaluation.evaluate(self, split, k, n_samples, num_prompts, max_batch, progress, mode)


if TYPE_CHECKING:  # the type checker verifies that the Trainer is the StepContext its methods see

    def _is_a_step_context(trainer: Trainer) -> StepContext:
        return trainer
