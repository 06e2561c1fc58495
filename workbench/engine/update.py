"""The update of one step: micro-batches, the policy's log-probs, the loss, the optimizer step.

    update(trainer, batch, settings)       the whole update, ``num_iterations`` passes
      plan_update                          micro-batches, tokens the loss counts, KL rows
      micro_batch_loss                     log-probs (Trainer.token_logprobs) -> core loss
      optimizer step                       clipped gradient, or a counted skip

The loss is ``step.policy_loss`` (the one loss function, shared with the TRL backend); a method
changes it only through its hooks (``loss_settings``, ``token_loss``, ``old_logprobs``) and what it
left in the batch (``training_rows``, ``graph_logprobs``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from workbench import core, step
from workbench.step.batch import RolloutBatch


@dataclass
class UpdatePlan:
    """What every pass of one update shares (``plan_update``)."""

    chunks: list[torch.Tensor]  # row indices of each micro-batch
    precomputed: torch.Tensor | None  # log-probs of chunks[0] with their graph (EEPO), else None
    keep: torch.Tensor  # [N, T] bool: tokens the loss counts
    valid_tokens: torch.Tensor  # scalar: valid tokens in the batch
    kept_tokens: torch.Tensor  # scalar: tokens the loss counts in the batch
    with_entropy: bool  # the entropy bonus needs entropies with their gradient
    use_ref: bool  # the KL to the reference is computed (in the loss, or as telemetry)
    kl_rows: torch.Tensor  # [N] bool: rows whose KL is measured
    kl_tokens: float  # valid tokens of those rows
    old_logps: list[torch.Tensor] = field(default_factory=list)  # per micro-batch, fixed by the first pass
    ref_logps: list[torch.Tensor] = field(default_factory=list)
    # per micro-batch, the first pass against the sampler (core.sampler_mismatch_totals)
    mismatch: list[torch.Tensor] = field(default_factory=list)


def update(trainer, batch: RolloutBatch, settings: dict) -> dict[str, float]:
    """One update on the batch (``num_iterations`` passes over it) with the method's loss
    ``settings`` for it: for each micro-batch, the policy's log-probs, the loss (``core`` on
    tensors) and its gradient; then the clipped optimizer step. A non-finite loss or gradient
    skips the update and is counted."""
    sampled, batch = batch, batch.rows_to_train()
    plan = plan_update(trainer, batch, settings)
    trainer.policy.model.train()
    totals = {"loss": 0.0, "clipped": 0.0, "kl": 0.0}
    skipped, grad_norm = False, float("nan")
    for iteration in range(trainer.cfg.num_iterations):
        record = iteration == trainer.cfg.num_iterations - 1  # report what the last pass saw
        trainer.optimizer.zero_grad(set_to_none=True)
        for c in range(len(plan.chunks)):
            loss, clipped, kl_sum = micro_batch_loss(trainer, batch, plan, c, iteration, settings, record)
            totals["kl"] += kl_sum
            if not torch.isfinite(loss):
                skipped = True
                break
            loss.backward()
            if record:
                totals["loss"] += float(loss.detach())
                totals["clipped"] += float(clipped.sum())
        if not skipped:
            params = list(trainer.policy.trainable_parameters().values())
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, trainer.cfg.max_grad_norm))
            skipped = not torch.isfinite(torch.tensor(grad_norm))
        if skipped:
            trainer.optimizer.zero_grad(set_to_none=True)
            trainer.nan_skips += 1
            break
        trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.policy.model.eval()
    if plan.use_ref and sampled.ref_logprobs is None:  # for the per-token KL the rollouts record
        sampled.ref_logprobs = sampled.from_training_rows(batch, measured_reference(batch, plan))
    return step.update_numbers(
        totals["loss"],
        totals["clipped"],
        float(plan.valid_tokens),
        totals["kl"],
        plan.kl_tokens if plan.use_ref else 0.0,
        grad_norm,
        skipped,
        core.combine_mismatch_totals(torch.stack(plan.mismatch)) if plan.mismatch else None,
    )


def plan_update(trainer, batch: RolloutBatch, settings: dict) -> UpdatePlan:
    """What the update's passes share: the micro-batches, the tokens the loss counts, and
    which rows' KL to the reference is measured."""
    keep = step.loss_mask(batch, settings)
    with_entropy = settings["entropy_coef"] > 0
    # a method's pass that already ran these rows, with their graph: used once, and not with the
    # entropy bonus (which needs the entropies' graph too)
    precomputed, batch.graph_logprobs = None if with_entropy else batch.graph_logprobs, None
    chunks = split_into_micro_batches(trainer.cfg, batch, skip=precomputed[0] if precomputed else None)
    if precomputed:
        chunks.insert(0, precomputed[0])
    # The KL in the loss needs every row's reference log-probs; at beta 0 the KL is
    # telemetry only and is measured on one response per group (a 1/G-size pass).
    exact_kl = settings["beta"] > 0 or batch.ref_logprobs is not None
    kl_rows = torch.ones(len(batch), dtype=torch.bool) if exact_kl else one_response_per_group(batch)
    return UpdatePlan(
        chunks=chunks,
        precomputed=precomputed[1] if precomputed else None,
        keep=keep,
        valid_tokens=batch.mask.sum().clamp(min=1),
        kept_tokens=keep.sum().clamp(min=1).to(batch.mask.dtype),
        with_entropy=with_entropy,
        use_ref=settings["beta"] > 0 or trainer.cfg.track_kl,
        kl_rows=kl_rows,
        kl_tokens=float((batch.mask.cpu() * kl_rows[:, None]).sum().clamp(min=1)),
    )


def micro_batch_loss(
    trainer, batch: RolloutBatch, plan: UpdatePlan, c: int, iteration: int, settings: dict, record: bool
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(loss of micro-batch ``c`` with its graph, its clipped valid tokens [rows, T], the
    sum of its measured KL when ``record``, else 0). The first pass also fixes each micro-batch's old and reference
    log-probs in ``plan``."""
    cfg, rows = trainer.cfg, plan.chunks[c]
    mask = batch.mask[rows]  # [rows, T]
    entropy = None
    if plan.precomputed is not None and iteration == 0 and c == 0:
        logp = plan.precomputed  # EEPO's unlearning pass already ran these rows
    else:
        # only as wide as this micro-batch's longest row; zeros after it (masked out)
        width = max(1, int(mask.sum(-1).max()))
        logp, entropy = trainer.token_logprobs(
            [batch.prompt_ids[i] for i in rows.tolist()],
            batch.ids[rows, :width],
            grad=True,
            with_entropy=plan.with_entropy,
        )
        pad = (0, mask.shape[1] - width)
        logp = torch.nn.functional.pad(logp, pad)  # [rows, T]
        entropy = None if entropy is None else torch.nn.functional.pad(entropy, pad)
    if iteration == 0:
        plan.mismatch.append(core.sampler_mismatch_totals(logp, batch.logprobs[rows], mask))
        plan.old_logps.append(trainer.method.old_logprobs(batch, rows, logp.detach()))
        if plan.use_ref and batch.ref_logprobs is not None:  # a method already ran the reference
            plan.ref_logps.append(batch.ref_logprobs[rows].float())
        elif plan.use_ref:  # the reference never moves: one pass per step
            plan.ref_logps.append(reference_logprobs(trainer, batch, rows[plan.kl_rows[rows]], rows))
    assert batch.token_advantages is not None, "the advantage phase fills the token advantages"
    # Normalise each micro-batch by the whole batch so accumulation equals one big batch.
    share = step.BatchShare(plan.valid_tokens, len(rows) / len(batch), plan.kept_tokens)
    part = step.policy_loss(
        trainer.method,
        settings,
        share,
        logp,
        plan.old_logps[c],
        batch.token_advantages[rows],
        mask,
        plan.keep[rows],
        loss_type=cfg.loss_type,
        max_completion_length=cfg.max_completion_length,
        entropy=entropy,
        ref_logp=plan.ref_logps[c] if plan.use_ref else None,
        generator=trainer.generator(trainer.step_index, 11, iteration, c),
    )
    kl_sum = 0.0
    if record and part.kl is not None:  # telemetry of the last pass only: no sync on the others
        kl_sum = float((part.kl * mask * plan.kl_rows[rows, None].to(mask.device)).sum())
    return part.loss, part.clipped, kl_sum


def reference_logprobs(trainer, batch: RolloutBatch, measured: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Reference log-probs [len(rows), T] of the ``measured`` rows, 0 for the others (never counted)."""
    ref = torch.zeros(len(rows), batch.mask.shape[1])
    if len(measured):
        width = max(1, int(batch.mask[measured].sum(-1).max()))
        values, _ = trainer.token_logprobs(
            [batch.prompt_ids[i] for i in measured.tolist()], batch.ids[measured, :width], adapter="reference"
        )
        ref[torch.isin(rows, measured), :width] = values.to(ref.device)
    return ref.to(batch.mask.device)


def measured_reference(batch: RolloutBatch, plan: UpdatePlan) -> torch.Tensor:
    """[N, T] the reference log-probs the update computed, NaN on the rows it did not measure."""
    ref = torch.full(batch.mask.shape, float("nan"))
    for rows, values in zip(plan.chunks, plan.ref_logps):
        measured = plan.kl_rows[rows]
        ref[rows[measured]] = values[measured].float().cpu()
    return ref


def one_response_per_group(batch: RolloutBatch) -> torch.Tensor:
    """[N] bool: the first row of each group in each context and stage."""
    first: dict[tuple, int] = {}
    for i, key in enumerate(zip(batch.group.tolist(), batch.mode, batch.stage)):
        first.setdefault(key, i)
    chosen = torch.zeros(len(batch), dtype=torch.bool)
    chosen[list(first.values())] = True
    return chosen


def split_into_micro_batches(cfg, batch: RolloutBatch, skip: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Row indices of each micro-batch of the update, rows in ``skip`` left out.

    Micro-batches never mix contexts (a long system prompt is then computed once per
    micro-batch) nor EEPO stages; within one, rows of similar length go together and
    ``micro_batch_tokens`` bounds rows x longest row (``gradient_accumulation_steps``
    splits further).
    """
    lengths = batch.mask.sum(-1).long().tolist()
    skipped = set() if skip is None else set(skip.tolist())
    blocks = list(zip(batch.mode, batch.stage))
    chunks = []
    for block in dict.fromkeys(blocks):
        members = [i for i, b in enumerate(blocks) if b == block and i not in skipped]
        if not members:
            continue
        block_lengths = [lengths[i] for i in members]
        # gradient_accumulation_steps=k cuts the block's padded rows x longest into k or more pieces
        padded = len(members) * max(block_lengths)
        budget = min(cfg.micro_batch_tokens, max(1, -(-padded // cfg.gradient_accumulation_steps)))
        chunks += [torch.tensor([members[k] for k in run]) for run in micro_batches(block_lengths, budget)]
    return chunks


def micro_batches(lengths: list[int], max_tokens: int, overhead_tokens: int = 256) -> list[list[int]]:
    """Split rows into micro-batches for the update: lists of row indices, longest rows first.

    A forward pass over a micro-batch costs about ``overhead_tokens + rows x longest row``
    (the rest of each row is padding it computes for nothing), and holds at most
    ``max_tokens`` of that (one row alone may exceed it). Rows sorted by length are cut into
    contiguous runs by dynamic programming so the summed cost is least: short rows stop
    paying for long ones, and activations stay small enough to be cheap to move.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    width = [max(1, int(lengths[i])) for i in order]
    best = [0.0] + [float("inf")] * len(order)  # best[j]: least cost of the first j sorted rows
    cut = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        for i in range(j - 1, -1, -1):  # the run i..j-1 is padded to width[i], its longest row
            tokens = (j - i) * width[i]
            if tokens > max_tokens and j - i > 1:
                break
            cost = best[i] + overhead_tokens + tokens
            if cost < best[j]:
                best[j], cut[j] = cost, i
    runs, j = [], len(order)
    while j > 0:
        runs.append(order[cut[j] : j])
        j = cut[j]
    return runs[::-1]
