"""The TRL engine: the workbench's methods and telemetry on TRL's GRPOTrainer.

TRL keeps its loop, its accelerate integration (DDP, DeepSpeed, FSDP) and its generation (HF or
vLLM); the workbench takes four of its extension points:

    _tokenize_prompts                prompts as the workbench formats them (one formatter, same ids)
    _generate_and_score_completions  after TRL generated and rewarded: this process's rows as a
                                     RolloutBatch with its telemetry (entropy, log-probs, top-k
                                     alternatives from one scoring pass), the method's token
                                     advantages [B, T], and the rows sent to the main process
    _compute_loss                    the workbench's loss (``core`` and the method's ``token_loss``)
                                     on TRL's micro-batch, normalised over all processes
    log                              the main process writes the step: rollouts of every process,
                                     one metrics row with the workbench's column names

Each process samples whole groups (a group never spans two processes), so every advantage is
computed where its group is. Methods that sample in phases of their own (EEPO's two stages with
the unlearning step between, Policy Split's two modes) sample with the workbench's own sampler
inside TRL's step (``_generate_single_turn``), and their training rows (Policy Split trains each
response in two contexts) replace TRL's batch before the loss (``trl_rows.training_inputs``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import accelerate
import pandas as pd
import torch
from accelerate.utils import gather_object
from transformers.trainer_utils import TrainOutput
from trl import GRPOTrainer

from workbench import core, methods, step, tasks
from workbench.config import ConfigError, RunConfig
from workbench.integrations import trl_rows, trl_run
from workbench.integrations.trl_config import grpo_config, half_precision, on_cpu
from workbench.models import budget
from workbench.models.policy import Policy
from workbench.models.sampling import Sampler
from workbench.run.store import RunStore
from workbench.run.writer import resume_changes
from workbench.step.batch import RolloutBatch

if TYPE_CHECKING:
    from workbench.step.context import StepContext


TRL_OUTPUT = "trl"  # GRPOConfig.output_dir in the run directory: TRL writes its checkpoints there first


class WorkbenchGRPOTrainer(step.ScoresTokens, GRPOTrainer):
    """TRL's GRPOTrainer running the workbench method ``cfg.method`` for ``steps`` steps and writing
    the workbench run directory ``out_dir`` (on the main process only).

    ``policy`` defaults to ``cfg.model`` with a new LoRA adapter seeded by ``cfg.seed`` (the
    workbench Trainer's), ``task`` to ``cfg.task``; ``trl_fields`` are further GRPOConfig fields (vLLM,
    DeepSpeed, ...); the fields a RunConfig sets are refused there. Step s trains on the prompts
    the workbench Trainer's step s draws.

    Called with TRL's own arguments and ``run_dir=`` instead (``WorkbenchGRPOTrainer(model=...,
    args=GRPOConfig(...), train_dataset=..., run_dir=...)``), it is the drop-in for a TRL script of
    one's own: ``drop_in`` (``trl_recording.RecordingGRPOTrainer``), TRL's training recorded."""

    drop_in: ClassVar[type | None] = None  # set by workbench.integrations.trl

    def __new__(cls, *args, **kwargs):
        if cls is WorkbenchGRPOTrainer and "run_dir" in kwargs and cls.drop_in is not None:
            cls = cls.drop_in  # a subclass: Python then runs its __init__ with these arguments
        return super().__new__(cls)

    def __init__(
        self,
        cfg: RunConfig,
        out_dir: str | Path,
        steps: int,
        policy: Policy | None = None,
        task: tasks.Task | None = None,
        resume: bool = False,
        **trl_fields,
    ):
        cfg.validate()
        trl_run.stop_with_the_launcher()
        self.run_store = RunStore(out_dir)  # read by every process; written by the main one's writer
        cfg, stored = trl_run.with_precision(cfg, self.run_store, resume)  # "auto" chosen, and recorded so
        self.own_sampling = methods.get(cfg.method).samples_on_its_own()
        if self.own_sampling and trl_fields.get("use_vllm"):
            raise ConfigError(
                "trl.use_vllm",
                True,
                f"false for {cfg.method}: it samples in phases of its own, "
                "with the workbench's sampler (vLLM generates plain groups only)",
            )
        self.cfg, self.method = cfg, methods.get(cfg.method)(cfg)
        self.settings = self.method.loss_settings()
        state = accelerate.PartialState(cpu=on_cpu(cfg))  # the first PartialState decides: see grpo_config
        # the step a resumed run continues from, and TRL's checkpoint of it (None: a new run)
        self.resume_step: int | None = None
        self.resume_from: Path | None = None
        if resume:
            trl_fields = trl_run.resumed_fields(self.run_store, state.num_processes, trl_fields)
            assert stored is not None
            resume_changes(stored, cfg.to_dict(), self.run_store.dir, ())
            self.resume_step, self.resume_from = trl_run.resume_point(self.run_store)
        # before the model loads: a DeepSpeed ZeRO-3 config then shards it as it loads (zero3_init_flag)
        args = grpo_config(cfg, self.settings, self.run_store.dir / TRL_OUTPUT, steps, **trl_fields)
        self.user_fields = trl_fields
        # the main process claims the run directory before any work, and lets go if the run cannot start
        self.writer = trl_run.open_writer(self.run_store, self.resume_step) if state.is_main_process else None
        try:
            self._build(cfg, steps, args, policy, task, state.device)
            if self.writer is not None and self.resume_step is None:
                self.writer.start(cfg, backend=trl_run.backend_info(self.accelerator, trl_fields))
        except BaseException:
            if self.writer is not None:
                self.writer.close()
            raise
        self.boundaries = trl_run.StepBoundaries(self)
        self.add_callback(self.boundaries)

    def _build(self, cfg: RunConfig, steps: int, args, policy, task, device: torch.device) -> None:
        half = half_precision(cfg)  # the frozen base in the run's half precision, when it has one (half the memory)
        # sizes checked on the device the run trains on, before the adapter or anything else is allocated
        self.policy = policy or Policy.for_run(cfg, dtype=getattr(torch, half) if half else None, memory_of=device)
        self.task = task or tasks.from_config(cfg.task)
        self.problems, dataset = trl_rows.training_prompts(self.task, cfg, steps)
        # every prompt of the run with its response budget fits the model's context, checked before the
        # run directory is written (TRL's generation would fail inside a step, leaving a run behind)
        prompts = sorted({p.prompt for p in self.problems})
        budget.check_context(self.policy.model, self.policy.format_prompts(prompts), cfg.max_completion_length)
        self._scores: list[tasks.Score] = []
        self._step_problems: list[tasks.Problem] = []  # this process's problems of the step, one per group
        self._sampled: RolloutBatch | None = None  # what the method sampled (own sampling), in TRL's row order
        self.sampler = Sampler(
            self.policy.model, self.policy.tokenizer.eos_token_id, self.policy.tokenizer.pad_token_id
        )
        # this process's metrics of the steps so far (EEPO's gate reads its window from them)
        # (the rows up to the checkpoint: every process reads them, whenever the main one drops the rest)
        rows = self.run_store.read_metrics() if self.resume_step is not None else []
        self.records: list[dict] = [r for r in rows if r["step"] < (self.resume_step or 0)]
        self._pending: dict | None = None  # the step being trained: its rollouts and numbers, until it is logged
        self._step_open = False  # between a step's generation and its metrics row: not a step boundary
        # this step's clipped tokens, valid tokens, KL sum and tokens it was measured on (all processes)
        self._loss_numbers = torch.zeros(4)
        # this step's first-pass log-probs against the sampler's (core.sampler_mismatch_totals), all processes
        self._mismatch = core.no_mismatch_totals()
        super().__init__(
            model=self.policy.model,
            reward_funcs=[self.reward],
            args=args,
            train_dataset=dataset,
            processing_class=self.policy.tokenizer,
        )
        if "ref" in self.policy.model.peft_config:
            # with beta > 0 TRL keeps a copy of the adapter it was given as the reference; the workbench's
            # reference is the base model (the adapter off), whatever adapter the run starts from
            self.policy.model.delete_adapter("ref")

    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
    ) -> TrainOutput:
        """TRL's train; a run made with ``resume=True`` continues from its newest checkpoint. A first
        Ctrl-C or SIGTERM stops the run at the end of the step under way, saved (then KeyboardInterrupt);
        an exception between steps saves the last step first. The run directory's lock is let go at the end."""
        if resume_from_checkpoint is None and self.resume_from is not None:
            resume_from_checkpoint = str(self.resume_from)
        try:
            with self.boundaries.taking_signals():
                try:
                    output = super().train(resume_from_checkpoint, trial, ignore_keys_for_eval)
                except BaseException:
                    trl_run.save_on_the_way_out(self)
                    raise
        finally:
            if self.writer is not None:
                self.writer.close()
        if self.boundaries.stop_requested:
            raise KeyboardInterrupt  # stopped by a signal, saved at the end of its last step
        return output

    def _save_checkpoint(self, model, trial) -> None:
        """TRL's checkpoint of the step (every process writes its part), moved into the run's
        checkpoint of that step with the adapter and the digests of every file (``RunWriter``)."""
        super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()  # every process's RNG state is on disk
        if self.writer is not None:
            step = self.step_index  # TRL names its checkpoint by its own count, the optimizer steps
            trl_files = self.run_store.dir / TRL_OUTPUT / f"checkpoint-{self.state.global_step}"
            state = {"nan_skips": 0, "engine": trl_run.ENGINE}
            self.writer.checkpoint(step, self.policy, self.optimizer, state, {trl_run.TRL_FILES: trl_files})
        self.accelerator.wait_for_everyone()

    # --- what the method hooks see of a trainer ----------------------------------------------------
    @property
    def step_index(self) -> int:
        """The workbench's step: TRL's optimizer steps, num_iterations to a generation."""
        return self.state.global_step // self.cfg.num_iterations

    def generator(self, *parts: int) -> torch.Generator:
        """Seeded as the Trainer's on the main process; each other process draws its own stream."""
        process = self.accelerator.process_index
        seed = core.derive_seed(self.cfg.seed, *parts, *([process] if process else []))
        return torch.Generator(self.policy.device).manual_seed(seed)

    def autocast(self):
        return self.accelerator.autocast()

    def sample_group(
        self,
        problems: list[tasks.Problem],
        num_generations: int,
        system: str | None = None,
        mode: str = "normal",
        stage: int = 1,
        generator: torch.Generator | None = None,
    ) -> RolloutBatch:
        """``step.sample_group`` with the workbench's sampler, for the methods that sample on their own."""
        return step.sample_group(
            self, self.sampler, self.autocast(), problems, num_generations, system, mode, stage, generator
        )

    # --- TRL's extension points ----------------------------------------------------------------------
    def _tokenize_prompts(self, prompts: list):
        return self.policy.format_prompts(prompts), None, {}

    def reward(self, prompts, completions, problem, **_):
        """The task's verifier on this process's rows (TRL's reward function); keeps the scores."""
        self._scores = tasks.score_batch(self.task, [self.problems[i] for i in problem], completions)
        return [s.reward for s in self._scores]

    def _generate_single_turn(self, prompt_ids, *args, **kwargs):
        if not self.own_sampling:
            return super()._generate_single_turn(prompt_ids, *args, **kwargs)
        training = self.model.training  # the Trainer's sampling puts the model in eval mode
        phases = self.method.sample(self, self._step_problems)
        try:
            while True:
                next(phases)
        except StopIteration as done:
            batch = done.value
        finally:
            self.model.train(training)
        # TRL's rows are group-major (a group's G rows together); keep the method's order within a group.
        # (The reordered batch drops EEPO's kept graph: TRL's loss runs its own pass.)
        batch = batch.select(sorted(range(len(batch)), key=lambda i: (int(batch.group[i]), i)))
        self._sampled = batch
        return [batch.ids[i, :n].tolist() for i, n in enumerate(batch.mask.sum(-1).long().tolist())], None

    def _generate_and_score_completions(self, inputs):
        started = time.perf_counter()
        self._step_open = True  # until its metrics row is written
        problem_index = [x["problem"] for x in inputs]
        self._step_problems = [self.problems[i] for i in problem_index[:: self.cfg.num_generations]]
        out = super()._generate_and_score_completions(inputs)
        batch = self._sampled if self.own_sampling else self.rollout_batch(out)
        step.apply_scores(batch, self._scores)
        out = self.method_inputs(batch, out)
        step.finish_rollouts(batch, self.cfg)
        self._collect(batch, self.method.extra_metrics(self, batch), started)
        return out

    def method_inputs(self, batch: RolloutBatch, out: dict) -> dict:
        """The method's advantages [B, T] of a scored batch, and the loss's inputs TRL passes on to
        ``_compute_loss``: the tokens it keeps and, where one ran, the reference's log-probs."""
        self.method.advantages(self, batch)
        self.settings = self.method.loss_settings(batch)  # a method may steer its coefficients step by step
        train = batch.rows_to_train()
        device = out["completion_ids"].device
        if self.own_sampling:
            out = trl_rows.training_inputs(self, train, device)
        assert train.token_advantages is not None  # every method's advantages fill them
        out["advantages"] = train.token_advantages.to(device)  # [B, T]
        out["keep"] = step.loss_mask(train, self.settings).to(device)
        out["sampler_logprobs"] = train.logprobs.float().to(device)  # [B, T], NaN where unknown
        out["num_kept_in_batch"] = self.accelerator.gather(out["keep"].sum()).sum()  # all processes' kept tokens
        if train.ref_logprobs is not None:
            out["ref_logprobs"] = train.ref_logprobs.to(device)
        return out

    def rollout_batch(self, out: dict) -> RolloutBatch:
        """This process's rows as TRL sampled them, with the telemetry of one scoring pass."""
        return trl_rows.rollout_batch(out, self._step_problems, self.policy, self.cfg, self.autocast())

    def _collect(self, batch: RolloutBatch, numbers: dict, started: float) -> None:
        """Send this process's rows and numbers to the main process (every process takes part)."""
        self.records.append(numbers)
        frames = gather_object([batch.to_frame(self.step_index, self.policy.tokenizer)])
        numbers = gather_object([numbers])
        if self.accelerator.is_main_process:
            self._pending = {"frames": frames, "numbers": numbers, "started": started}

    def _compute_loss(self, model, inputs):
        prompt_ids, completion_ids = inputs["prompt_ids"], inputs["completion_ids"]
        mask = inputs["completion_mask"]  # [B, T]
        s = self.settings
        with_entropy = s["entropy_coef"] > 0
        logp, entropy, _ = self._get_per_token_logps_and_entropies(
            model,
            torch.cat([prompt_ids, completion_ids], dim=1),
            torch.cat([inputs["prompt_mask"], mask], dim=1),
            completion_ids.size(1),
            compute_entropy=with_entropy,
        )
        old = inputs.get("old_per_token_logps")  # TRL's, when it runs several updates per batch
        old = logp.detach() if old is None else old
        totals = core.sampler_mismatch_totals(old, inputs["sampler_logprobs"], mask)
        self._mismatch = trl_run.joined_mismatch(self.accelerator, self._mismatch, totals)
        if "old_logprobs" in inputs:  # the method's (training_inputs): NaN where it takes the above
            old = torch.where(torch.isnan(inputs["old_logprobs"]), old, inputs["old_logprobs"])
        ref = inputs.get("ref_logprobs", inputs.get("ref_per_token_logps"))  # where a reference pass ran
        # summed over micro-batches and averaged over the processes (DDP): the whole generation's loss
        processes = self.accelerator.num_processes
        share = step.BatchShare(
            inputs["num_items_in_batch"] / processes,
            1.0 / self.current_gradient_accumulation_steps,
            inputs["num_kept_in_batch"].clamp(min=1) / processes,
        )
        part = step.policy_loss(
            self.method,
            s,
            share,
            logp,
            old,
            inputs["advantages"],
            mask,
            inputs["keep"],
            loss_type=self.cfg.loss_type,
            max_completion_length=self.cfg.max_completion_length,
            entropy=entropy if with_entropy else None,
            ref_logp=ref,
            sampling_ratio=inputs.get("importance_sampling_ratio"),  # vLLM sampled: as TRL corrects
            generator=self.generator(self.state.global_step, 11, self._step),
        )
        kl_sum = kl_tokens = torch.zeros((), device=logp.device)
        if part.kl is not None:  # measured where a reference pass ran (beta > 0, or ERPO's)
            kl_sum, kl_tokens = (part.kl * mask).sum(), mask.sum()
        counts = torch.stack([part.clipped.sum(), mask.sum(), kl_sum, kl_tokens]).float()
        self._loss_numbers += self.accelerator.gather(counts[None]).sum(0).cpu()
        return part.loss

    def log(self, logs: dict, start_time: float | None = None) -> None:
        super().log(logs, start_time)
        if "loss" in logs and self.state.global_step % self.cfg.num_iterations:
            self._loss_numbers.zero_()  # a step's row reports its last update's pass, as the Trainer's
            return
        if self.writer is None or self._pending is None or "loss" not in logs or not self.policy.model.training:
            return  # the main process writes the step, once its last update's loss is logged
        index = self.step_index - 1  # the workbench counts steps from 0
        frame = self.join_frames(self._pending["frames"])
        method_numbers = pd.DataFrame(self._pending["numbers"]).mean().to_dict()  # over the processes
        row = step.metrics_row(
            index,
            RolloutBatch.from_frame(frame),
            self.update_numbers(logs),
            method_numbers,
            cfg=self.cfg,
            loss_settings=self.logged_settings(logs),
            nan_skips=0,
            reward_errors=0,
            learning_rate=float(logs["learning_rate"]),
            seconds=time.perf_counter() - self._pending["started"],
        )
        row = {**self.logged_numbers(logs), **row}  # the workbench's own columns win a shared name
        self.writer.record(index, frame if self.cfg.save_rollouts else None, row)  # the row last
        self._pending = None
        self._step_open = False
        self._loss_numbers.zero_()
        self._mismatch = core.no_mismatch_totals()

    def join_frames(self, frames: list[pd.DataFrame]) -> pd.DataFrame:
        return trl_rows.joined(frames, self.cfg.num_generations)

    def logged_numbers(self, logs: dict) -> dict[str, float]:
        """Numbers of TRL's log the metrics row keeps besides the workbench's own: none here."""
        return {}

    def logged_settings(self, logs: dict) -> dict:
        """The loss's coefficients in force at the logged step: the method's, which the workbench's loss used."""
        return self.settings

    def update_numbers(self, logs: dict) -> dict[str, float]:
        """The update's part of the step's metrics row: the sums the workbench's loss kept."""
        clipped, tokens, kl_sum, kl_tokens = self._loss_numbers.tolist()
        grad_norm = float(logs.get("grad_norm", "nan"))
        return step.update_numbers(
            float(logs["loss"]), clipped, tokens, kl_sum, kl_tokens, grad_norm, False, self._mismatch
        )


if TYPE_CHECKING:  # the type checker verifies that the TRL engine is the StepContext its methods see

    def _is_a_step_context(trainer: WorkbenchGRPOTrainer) -> StepContext:
        return trainer
