"""TRL's rows as the workbench's: the prompts each step trains on, a process's sampled rows as a
``RolloutBatch`` with the telemetry of one scoring pass, and the processes' rollout frames joined."""

from __future__ import annotations

import pandas as pd
import torch

from workbench import core, tasks
from workbench.config import RunConfig
from workbench.models.policy import Policy
from workbench.models.prompt_layout import left_pad
from workbench.step.batch import RolloutBatch

TOP_ALTERNATIVES = 5  # as the workbench's sampler records
SCORING_BYTES = 2**28  # the scoring pass's [rows, T, vocabulary] float32 logits stay under this


def training_prompts(task: tasks.Task, cfg: RunConfig, steps: int):
    """(the problems of every step, in order, and TRL's dataset of them): step s trains on the prompts
    the workbench Trainer's step s draws."""
    from datasets import Dataset

    seeds = [core.derive_seed(cfg.seed, step, 7) for step in range(steps)]  # the Trainer's prompt seeds
    problems = [p for seed in seeds for p in task.prompts("train", cfg.num_prompts, seed=seed)]
    dataset = Dataset.from_dict({"prompt": [p.prompt for p in problems], "problem": list(range(len(problems)))})
    return problems, dataset


def rollout_batch(
    out: dict, problems: list[tasks.Problem], policy: Policy, cfg: RunConfig, autocast, first_row: int = 0
) -> RolloutBatch:
    """A process's rows as TRL sampled them (``out``: TRL's prompt and completion ids and masks), in
    groups of ``cfg.num_generations`` rows, one problem a group, with the telemetry of one scoring
    pass; the log-probs are the sampler's where TRL has them (vLLM), and the reference's where TRL
    computed them. ``first_row``: the index of this process's first row among every process's (a process's
    rows may start or end inside a group when TRL spreads groups over processes)."""
    g = cfg.num_generations
    prompt_ids = [row[m.bool()].tolist() for row, m in zip(out["prompt_ids"].cpu(), out["prompt_mask"].cpu())]
    mask = out["completion_mask"].cpu().float()  # as the workbench's sampler gives it
    ids = out["completion_ids"].cpu() * mask.long()  # [B, T]
    logp, entropy, topk_ids, topk_probs = telemetry(policy, prompt_ids, ids, cfg.temperature, autocast)
    sampled = out.get("sampling_per_token_logps")  # vLLM's own log-probs, where it sampled
    if sampled is not None:
        sampled = sampled.detach().cpu().float()
        logp = torch.where(sampled.isnan(), logp, sampled)  # a token vLLM could not score: the pass's
    batch = RolloutBatch(
        problems=problems,
        group=(torch.arange(len(ids)) + first_row) // g - first_row // g,
        prompt_ids=prompt_ids,
        ids=ids,
        mask=mask,
        logprobs=logp,
        entropy=entropy,
        topk_ids=topk_ids,
        topk_probs=topk_probs,
        text=policy.decode(ids, mask),
        mode=["normal"] * len(ids),
        stage=[1] * len(ids),
        finished=_ended_with_eos(ids, mask, policy.tokenizer.eos_token_id),
    )
    if out.get("ref_per_token_logps") is not None:  # TRL ran the reference (beta > 0): the per-token KL
        batch.ref_logprobs = out["ref_per_token_logps"].detach().cpu().float()
    return batch


def _ended_with_eos(ids: torch.Tensor, mask: torch.Tensor, eos: int) -> torch.Tensor:
    """[B] bool: the row's last valid token is EOS (TRL's completion mask keeps it, as the
    workbench's sampler does); else TRL cut it off at the length limit."""
    lengths = mask.sum(-1).long()
    last = ids.gather(1, (lengths - 1).clamp(min=0)[:, None])[:, 0]
    return (last == eos) & (lengths > 0)


@torch.no_grad()
def telemetry(policy: Policy, prompt_ids: list[list[int]], ids: torch.Tensor, temperature: float, autocast):
    """(log-probs, entropy [B, T], top-k ids and probabilities [B, T, k]) of the sampled tokens under
    the current policy at the sampling temperature: what the workbench's sampler records."""
    parts = []
    vocabulary = policy.model.get_output_embeddings().weight.shape[0]
    step = max(1, SCORING_BYTES // (4 * vocabulary * max(1, ids.shape[1])))  # rows a pass
    with autocast:
        for start in range(0, len(ids), step):
            rows = slice(start, start + step)
            logits = policy.completion_logits(prompt_ids[rows], ids[rows]).float()  # [rows, T, V]
            logp, entropy = core.logprobs_and_entropy(logits, ids[rows].to(logits.device), temperature)
            # the top-k of log_softmax(z / temperature) are the top-k logits, less the log-normaliser
            top = torch.topk(logits, TOP_ALTERNATIVES, dim=-1)  # [rows, T, k]
            normaliser = torch.logsumexp(logits / temperature, dim=-1, keepdim=True)  # [rows, T, 1]
            probs = torch.exp(top.values / temperature - normaliser)
            parts.append((logp.cpu(), entropy.cpu(), top.indices.cpu(), probs.cpu()))
            del logits
    return tuple(torch.cat(p) for p in zip(*parts))


def joined(frames: list[pd.DataFrame], num_generations: int) -> pd.DataFrame:
    """The processes' rollout frames as one, group numbers made distinct (process order), each row
    marked with the process that sampled it."""
    parts, offset = [], 0
    for process, frame in enumerate(frames):
        parts.append(frame.assign(group=frame["group"] + offset, process=process))
        offset += len(frame) // num_generations
    return pd.concat(parts, ignore_index=True)


def training_inputs(trainer, train: RolloutBatch, device) -> dict:
    """TRL's inputs for the rows the method trains on, when they are not the rows TRL sampled
    (Policy Split's two contexts) or their old log-probs are the sampling model's (EEPO)."""
    prompt_ids, prompt_mask = left_pad(train.prompt_ids, trainer.policy.tokenizer.pad_token_id)
    mask = train.mask.long()
    rows = torch.arange(len(train))
    # NaN where the loss takes the detached current log-probs (one update per batch), else the
    # behaviour's (EEPO's stage 2); with several updates, the pre-update policy's throughout
    current = torch.full(train.mask.shape, float("nan"))
    if trainer.cfg.num_iterations > 1:
        current = trainer.token_logprobs(train.prompt_ids, train.ids)[0].cpu()
    old = trainer.method.old_logprobs(train, rows, current.to(train.logprobs.device))
    return {
        "prompt_ids": prompt_ids.to(device),
        "prompt_mask": prompt_mask.to(device),
        "completion_ids": train.ids.to(device),
        "completion_mask": mask.to(device),
        "old_logprobs": old.float().to(device),
        "num_items_in_batch": trainer.accelerator.gather(mask.sum().to(device)).sum(),
    }
