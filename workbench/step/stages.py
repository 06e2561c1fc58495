"""The training step, written once: what a method sees of the engine running it, and the
functions over a ``RolloutBatch`` that every engine calls.

    sample      method.sample(ctx, problems)        -> RolloutBatch   (phases yielded on the way)
    score       apply_scores(batch, scores)           rewards, answers, strategies, parsed
    advantages  method.advantages(ctx, batch)         sequence and token advantages
    loss        policy_loss(...)                      one micro-batch's share of the step's loss
    record      finish_rollouts, metrics_row          pivots and gate; the step's metrics row

An engine is an adapter of ``StepContext`` (``step_context``): the workbench ``Trainer`` (in-process) and
``integrations.trl.WorkbenchGRPOTrainer`` (TRL's loop, accelerate, vLLM) implement it and call
these functions; neither holds a copy of them. docs/architecture.md, "Adding an engine", says
what a third engine implements.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from workbench import core, metrics, tasks
from workbench.metrics import registry as M
from workbench.models import budget
from workbench.step.batch import RolloutBatch
from workbench.step.context import Adapter, StepContext

if TYPE_CHECKING:
    from workbench.config import RunConfig
    from workbench.methods.base import Method
    from workbench.models.policy import Policy
    from workbench.models.sampling import Sampler


# --- sample ----------------------------------------------------------------------------------
def sample_group(
    ctx: StepContext,
    sampler: Sampler,
    autocast,
    problems: list[tasks.Problem],
    num_generations: int,
    system: str | None = None,
    mode: str = "normal",
    stage: int = 1,
    generator: torch.Generator | None = None,
) -> RolloutBatch:
    """Sample ``num_generations`` responses per problem with ``sampler`` under ``autocast``; the
    stream is ``generator`` or the step's own for this stage and mode."""
    cfg, policy = ctx.cfg, ctx.policy
    prompt_ids = policy.format_prompts([p.prompt for p in problems], system)
    budget.check_context(policy.model, prompt_ids, cfg.max_completion_length)
    policy.model.eval()
    with autocast:
        samples = sampler.generate(
            prompt_ids,
            num_generations,
            max_new_tokens=cfg.max_completion_length,
            temperature=cfg.temperature,
            top_k=cfg.top_k or None,
            top_p=cfg.top_p,
            generator=generator or ctx.generator(ctx.step_index, stage, len(mode)),
        )
    texts = policy.decode(samples.ids, samples.mask)
    return RolloutBatch.from_samples(problems, prompt_ids, samples, texts, num_generations, mode, stage)


def token_logprobs(
    policy: Policy,
    temperature: float,
    autocast,
    prompt_ids: list[list[int]],
    ids: torch.Tensor,
    adapter: Adapter = "policy",
    grad: bool = False,
    with_entropy: bool = False,
    with_complement: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs [N, T] (float32) of ``ids`` after ``prompt_ids`` at ``temperature``, and
    their entropies or their log(1 - p) when asked: THE way every method and the update score
    tokens. ``adapter``: "policy", "reference" (adapter off) or a dict of moved adapter tensors;
    a graph is kept only with ``grad=True``."""
    with contextlib.nullcontext() if grad else torch.no_grad(), policy.adapter(adapter), autocast:
        logp, second = policy.token_logprobs(
            prompt_ids, ids, temperature, with_entropy=with_entropy, with_complement=with_complement
        )
    return logp.float(), None if second is None else second.float()


class ScoresTokens:
    """``token_logprobs`` for an engine: the one function above at the run's temperature, under the
    engine's ``autocast()``. The workbench Trainer and the TRL backend both take it from here."""

    policy: Policy
    cfg: RunConfig
    if TYPE_CHECKING:  # each engine has its own

        def autocast(self) -> contextlib.AbstractContextManager: ...

    def token_logprobs(
        self,
        prompt_ids: list[list[int]],
        ids: torch.Tensor,
        adapter: Adapter = "policy",
        grad: bool = False,
        with_entropy: bool = False,
        with_complement: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs [N, T] of ``ids`` after ``prompt_ids`` (``token_logprobs``, above)."""
        return token_logprobs(
            self.policy,
            self.cfg.temperature,
            self.autocast(),
            prompt_ids,
            ids,
            adapter,
            grad,
            with_entropy,
            with_complement,
        )


# --- score -----------------------------------------------------------------------------------
def apply_scores(batch: RolloutBatch, scores: Sequence[tasks.Score]) -> None:
    """Fill the batch's rewards, answers, strategies and parsed flags from the verifier's scores,
    one per row; a reward that is not a finite float32 number is refused, naming the row."""
    batch.rewards = torch.tensor([s.reward for s in scores], dtype=torch.float32, device=batch.ids.device)
    if not torch.isfinite(batch.rewards).all():  # e.g. 1e308, finite in Python, inf in float32
        row = int((~torch.isfinite(batch.rewards)).nonzero()[0])
        raise tasks.RewardFunctionError(
            f"reward {scores[row].reward!r} of response {row} ({batch.text[row][:80]!r}) is not a finite "
            "float32 number (|r| < 3.4e38): scale the rewards down"
        )
    batch.answers = [s.answer for s in scores]
    batch.strategies = [s.strategy for s in scores]
    batch.parsed = torch.tensor([s.parsed for s in scores], dtype=torch.bool)


def score(task: tasks.Task, batch: RolloutBatch) -> int:
    """Score every row with ``task``'s verifier (``apply_scores``); return how many reward-function
    failures were scored 0 (``reward_errors="zero"``; the default mode raises instead)."""
    failures_before = getattr(task, "error_count", 0)
    apply_scores(batch, tasks.score_batch(task, [batch.problems[g] for g in batch.group.tolist()], batch.text))
    return getattr(task, "error_count", 0) - failures_before


# --- loss ------------------------------------------------------------------------------------
def loss_mask(batch: RolloutBatch, settings: dict) -> torch.Tensor:
    """[N, T] bool: the tokens the loss counts (all valid ones, or the top-entropy share)."""
    if settings["top_entropy_quantile"] < 1.0:
        return core.top_entropy_mask(batch.entropy, batch.mask, settings["top_entropy_quantile"])
    return batch.mask.bool()


@dataclass(frozen=True)
class BatchShare:
    """What makes one micro-batch's loss its share of the step's: summed over micro-batches (and
    averaged over processes, under DDP) the shares are the loss of the whole batch."""

    valid_tokens: torch.Tensor | float  # the token mean's divisor: the batch's valid tokens (per process under DDP)
    row_fraction: float  # this micro-batch's rows / the batch's (one process's) rows
    kept_tokens: torch.Tensor | float  # the entropy bonus's divisor: the tokens the loss keeps, counted alike


@dataclass
class MicroBatchLoss:
    loss: torch.Tensor  # scalar, with its graph
    clipped: torch.Tensor  # [rows, T] bool: valid tokens whose ratio was clipped
    kl: torch.Tensor | None  # [rows, T] detached k3 KL to the reference, where one was given


def policy_loss(
    method: Method,
    settings: dict,
    share: BatchShare,
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    keep: torch.Tensor,
    *,
    loss_type: str,
    max_completion_length: int,
    entropy: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    sampling_ratio: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> MicroBatchLoss:
    """THE loss of one micro-batch (both engines): the method's token loss [rows, T] on the tokens
    ``keep`` counts, weighted by ``sampling_ratio`` (vLLM's importance correction) where given,
    plus beta x k3 KL to ``ref_logp``, aggregated as ``loss_type`` says and scaled to its ``share``;
    less ``entropy_coef`` x the mean entropy of the kept tokens when ``entropy`` (with its graph) is
    given: under ``top_entropy_quantile`` the bonus acts on the tokens the loss trains, as in TRL.
    (TRL takes that mean per micro-batch; here it is the batch's, so accumulation equals one big batch.)"""
    token_loss, clipped = method.token_loss(logp, old_logp, advantages, mask, settings, generator=generator)
    token_loss = token_loss * keep  # [rows, T]
    if sampling_ratio is not None:
        token_loss = token_loss * sampling_ratio
    kl = None
    if ref_logp is not None:
        kl = core.kl_k3(logp, ref_logp)
        if settings["beta"] > 0:
            token_loss = token_loss + settings["beta"] * kl
        kl = kl.detach()
    weight = float(mask.sum() / share.valid_tokens) if loss_type == "dapo" else share.row_fraction
    loss = core.aggregate_loss(token_loss, mask, loss_type, max_completion_length) * weight
    if entropy is not None:  # the entropy bonus, with its gradient
        loss = loss - settings["entropy_coef"] * (entropy * keep).sum() / share.kept_tokens
    return MicroBatchLoss(loss, clipped & mask.bool(), kl)


# --- record ----------------------------------------------------------------------------------
def finish_rollouts(batch: RolloutBatch, cfg: RunConfig) -> None:
    """What the viewers read of every batch: its pivots, a gate of ones where no method set one, and
    each token's KL to the reference where the step computed the reference's log-probs."""
    batch.pivots = metrics.find_pivots(batch.entropy, batch.mask, cfg.pivot_z_threshold, group=batch.group)
    if batch.gate is None:
        batch.gate = torch.ones_like(batch.entropy)
    if batch.ref_logprobs is not None:
        ref = batch.ref_logprobs.to(batch.logprobs.device)
        batch.token_kl = core.kl_k3(batch.logprobs.float(), ref.float()) * batch.mask


def metrics_row(
    step: int,
    batch: RolloutBatch,
    update_numbers: dict,
    method_numbers: dict,
    *,
    cfg,
    loss_settings: dict,
    nan_skips: int,
    reward_errors: int,
    learning_rate: float,
    seconds: float,
) -> dict[str, float]:
    """THE metrics row of a step (both engines): the rollouts' metrics, the update's numbers, the
    method's own, the live settings ``cfg`` held while the step ran (so anyone can see from which
    step a change acted) with the loss's coefficients as ``loss_settings`` had them (a method may
    steer one), and the step's bookkeeping."""
    return {
        M.STEP: step,
        **metrics.rollout_metrics(batch),
        **update_numbers,
        M.NAN_SKIPS: float(nan_skips),
        # reward-function failures scored 0 in this step (reward_errors="zero")
        M.REWARD_ERRORS: float(reward_errors),
        M.LEARNING_RATE: learning_rate,
        M.TEMPERATURE: float(cfg.temperature),
        M.TOP_P: float(cfg.top_p),
        M.BETA: float(loss_settings["beta"]),
        M.ENTROPY_COEF: float(loss_settings["entropy_coef"]),
        **method_numbers,
        M.STEP_TIME: seconds,
    }


def update_numbers(
    loss: float,
    clipped: float,
    valid_tokens: float,
    kl_sum: float,
    kl_tokens: float,
    grad_norm: float,
    skipped: bool,
    sampler_mismatch: torch.Tensor | None = None,
) -> dict[str, float]:
    """The update's part of the metrics row, from its sums (both engines); ``sampler_mismatch``: the
    [6] totals of ``core.sampler_mismatch_totals`` over the update's first pass, where it was measured."""
    numbers: dict[str, float] = {
        M.LOSS: float("nan") if skipped else loss,
        M.CLIP_FRACTION: clipped / max(valid_tokens, 1.0),
        M.KL: kl_sum / kl_tokens if kl_tokens else float("nan"),
        M.GRAD_NORM: grad_norm,
        M.SKIPPED: float(skipped),
    }
    if sampler_mismatch is not None:
        numbers.update(sampling_numbers(sampler_mismatch))
    return numbers


def sampling_numbers(totals: torch.Tensor) -> dict[str, float]:
    """The sampler-against-training-pass metrics (TRL's ``sampling/*``) of [6] mismatch totals; NaN
    where no token had the sampler's log-prob."""
    abs_sum, abs_max, tokens, ratio_sum, ratio_min, ratio_max = totals.tolist()
    if not tokens:
        abs_max = ratio_min = ratio_max = float("nan")
    return {
        M.SAMPLING_LOGP_DIFFERENCE_MEAN: abs_sum / tokens if tokens else float("nan"),
        M.SAMPLING_LOGP_DIFFERENCE_MAX: abs_max,
        M.IMPORTANCE_SAMPLING_RATIO_MIN: ratio_min,
        M.IMPORTANCE_SAMPLING_RATIO_MEAN: ratio_sum / tokens if tokens else float("nan"),
        M.IMPORTANCE_SAMPLING_RATIO_MAX: ratio_max,
    }
