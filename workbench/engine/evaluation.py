"""Evaluation: what a policy does on a split, and the pivot-sensitivity experiment.

``evaluate`` samples ``n_samples`` responses to held-out prompts and reports unbiased pass@k,
entropy and diversity (``Trainer.evaluate`` calls it). ``pivot_sensitivity`` tests the claim
behind critical decision pivots on one response: from a position, resample n continuations
and count how often the task outcome (a success or not) differs from the original's, at the
row's highest-entropy token and at its lowest-entropy one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from workbench import methods, metrics, tasks
from workbench.models.sampling import Sampler
from workbench.options import ConfigError
from workbench.tasks import is_success, score_batch


@torch.no_grad()
def evaluate(
    trainer,
    split: str = "test",
    k=None,
    n_samples: int = 16,
    num_prompts: int = 64,
    max_batch: int = 256,
    progress: bool = False,
    mode: str = "normal",
) -> dict[str, float]:
    """pass@k (unbiased), entropy and diversity of ``n_samples`` responses to each distinct question
    among ``num_prompts`` draws of the split (``prompts``: how many). ``k`` defaults to the whole
    curve, 1, 2, 4, ... up to ``n_samples``; ``mode="high_entropy"``: after Policy Split's prompt."""
    for name, value in (("n_samples", n_samples), ("num_prompts", num_prompts), ("max_batch", max_batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(name, value, "an integer >= 1")
    k = metrics.pass_at_k_grid(n_samples) if k is None else list(k)
    beyond = [kk for kk in k if isinstance(kk, bool) or not isinstance(kk, int) or not 1 <= kk <= n_samples]
    if beyond or not k:
        raise ConfigError(
            "k",
            beyond[0] if beyond else k,
            f"an integer from 1 to n_samples ({n_samples}): sample more responses per prompt for a larger k",
        )
    modes = methods.modes()
    if mode not in modes:
        raise ValueError(f"mode={mode!r} is not a mode; allowed: {', '.join(modes)}")
    problems = each_question_once(trainer.task.prompts(split, num_prompts, seed=12345))
    per_call = max(1, max_batch // n_samples)
    correct, entropies, lengths, strategies, answers = [], [], [], [], []
    for start in tqdm(range(0, len(problems), per_call), desc=f"eval {split}", disable=not progress):
        chunk = problems[start : start + per_call]
        batch = trainer.sample_group(
            chunk, n_samples, system=modes[mode], mode=mode, generator=trainer.generator(10**6 + start, len(split))
        )
        trainer.score(batch)
        for rows in batch.group_rows():
            rows_l = rows.tolist()
            rewards = batch.rewards[rows]
            correct.append(int(tasks.is_success(rewards).sum()))
            successes = [i for i in rows_l if tasks.is_success(batch.rewards[i])]
            strategies.append(metrics.distinct([batch.strategies[i] for i in successes]))
            answers.append(metrics.distinct([batch.answers[i] for i in rows_l]))
        entropies.append(batch.entropy[batch.mask.bool()])
        lengths.append(batch.response_lengths())
    result = {f"pass@{kk}": v for kk, v in metrics.mean_pass_at_k(correct, n_samples, k).items()}
    result.update(
        {
            "accuracy": sum(correct) / (len(correct) * n_samples),
            "accuracy_ci95": accuracy_half_width(correct, n_samples),
            "accuracy_ci95_sampling": sampling_half_width(correct, n_samples),
            "entropy_mean": float(torch.cat(entropies).mean()),
            "distinct_correct_strategies": sum(strategies) / len(strategies),
            "unique_answers": sum(answers) / len(answers),
            "response_length": float(torch.cat(lengths).mean()),
            "samples": len(correct) * n_samples,
            "prompts": len(correct),
        }
    )
    return result


def each_question_once(problems: list) -> list:
    """``problems`` without repeated questions (first kept): a split with few distinct questions
    (coins' test: 8; the real-model default task's: 46) repeats them, and a repeat counts twice."""
    seen: dict[str, object] = {}
    for problem in problems:
        seen.setdefault(problem.prompt, problem)
    return list(seen.values())


def accuracy_half_width(correct: list[int], n_samples: int) -> float:
    """Half-width of accuracy's (pass@1's) 95% interval from each prompt's successes of
    ``n_samples``: a prompt's samples are not independent, so the prompts are the unit (normal
    approximation over their accuracies), as a sample of the task's questions. Where the
    evaluation covers all of a small split, this overstates what is left: each question's own
    sampling."""
    if len(correct) < 2:
        return 0.0
    per_prompt = torch.tensor(correct, dtype=torch.float64) / n_samples
    return 1.96 * float(per_prompt.std(correction=1)) / len(correct) ** 0.5


def sampling_half_width(correct: list[int], n_samples: int) -> float:
    """Half-width of accuracy's 95% interval on these questions: only each question's own
    sampling, sum_q p_q (1 - p_q) / n / Q^2 with p_q (1 - p_q) / n estimated without bias by
    p̂ (1 - p̂) / (n - 1). The interval to read where the evaluation covers a split whole."""
    if n_samples < 2 or not correct:
        return 0.0
    p = torch.tensor(correct, dtype=torch.float64) / n_samples
    return 1.96 * float((p * (1 - p)).sum() / (n_samples - 1)) ** 0.5 / len(correct)


def pivot_sensitivity(
    trainer_or_policy,
    batch,
    response: int,
    position: int | None = None,
    n: int = 8,
    task=None,
    seed: int = 0,
    temperature: float | None = None,
    max_completion_length: int | None = None,
) -> dict[str, float]:
    """Outcome flip rates after resampling from a pivot and from a low-entropy position of one row.

    ``response`` is a row of a scored ``batch``. The pivot position is ``position`` when given,
    else the row's highest-entropy token (which is also its highest-entropy pivot whenever it
    has one: pivots are the tokens above a z-score threshold). The low position is the row's
    lowest-entropy valid token other than a final EOS. From each, ``n`` continuations of the
    completion tokens before it are sampled and the full completions (prefix + continuation)
    scored; a flip is an outcome (reward > 0.5) different from the row's own.

    Given a Trainer, its sampler, task, temperature, top-k/top-p, autocast and
    ``max_completion_length`` are used; given a Policy, pass ``task=`` (temperature defaults to
    1.0 and the length limit to the batch width). ``seed`` makes the result deterministic.
    """
    resampling = _resampling_setup(trainer_or_policy, batch, task, temperature, max_completion_length)
    length = _response_length(batch, response, position, n)
    entropy = batch.entropy[response, :length].float().cpu()
    ids = batch.ids[response, :length].tolist()
    pivot = int(entropy.argmax()) if position is None else position
    # a final EOS is nearly always certain and ends the response: not an interesting low position
    eos_id = resampling.policy.tokenizer.eos_token_id
    candidates = length - 1 if length > 1 and ids[-1] == eos_id else length
    low = int(entropy[:candidates].argmin())

    problem = batch.problems[int(batch.group[response])]
    if batch.rewards is not None:
        original = is_success(float(batch.rewards[response]))
    else:
        original = is_success(score_batch(resampling.task, [problem], [batch.text[response]])[0].reward)
    generator = torch.Generator(resampling.policy.device).manual_seed(seed)
    resampling.policy.model.eval()

    def flip_rate(at: int) -> float:
        completions = resampling.complete(batch.prompt_ids[response], ids[:at], n, generator)
        scores = score_batch(resampling.task, [problem] * n, completions)
        return sum(is_success(s.reward) != original for s in scores) / n

    return {
        "pivot_position": pivot,
        "pivot_entropy": float(entropy[pivot]),
        "pivot_flip_rate": flip_rate(pivot),
        "low_position": low,
        "low_entropy": float(entropy[low]),
        "low_flip_rate": flip_rate(low),
        "n": n,
    }


def _response_length(batch, response: int, position: int | None, n: int) -> int:
    """The number of generated tokens of row ``response``, after checking the request against it."""
    if not 0 <= response < len(batch):
        raise ValueError(f"response={response!r} is not a row of this batch; allowed: 0 to {len(batch) - 1}")
    if n < 1:
        raise ValueError(f"n={n!r} must be an integer >= 1")
    length = int(batch.mask[response].sum())
    if length == 0:
        raise ValueError(f"response={response} has no generated tokens to resample from")
    if position is not None and not 0 <= position < length:
        raise ValueError(f"position={position!r} is not a token of response {response}; allowed: 0 to {length - 1}")
    return length


@dataclass
class _Resampling:
    """What resampling continuations of a response needs: a Trainer's settings or a Policy's defaults."""

    policy: Any
    sampler: Sampler
    task: Any
    temperature: float
    limit: int  # the completion length limit, prefix included
    truncation: dict[str, Any]  # top-k/top-p keywords of Sampler.generate
    autocast: Callable[[], AbstractContextManager[Any]]

    def complete(self, prompt_ids: list[int], prefix: list[int], n: int, generator: torch.Generator) -> list[str]:
        """The texts of ``n`` completions that continue ``prefix`` (prefix included)."""
        with self.autocast():
            samples = self.sampler.generate(
                [prompt_ids + prefix],
                n,
                max_new_tokens=max(1, self.limit - len(prefix)),
                temperature=self.temperature,
                generator=generator,
                **self.truncation,
            )
        head = torch.tensor(prefix, dtype=torch.long, device=samples.ids.device).expand(n, -1)
        full_ids = torch.cat([head, samples.ids], dim=1)
        full_mask = torch.cat([torch.ones_like(head, dtype=samples.mask.dtype), samples.mask], dim=1)
        return self.policy.decode(full_ids, full_mask)


def _resampling_setup(trainer_or_policy, batch, task, temperature, max_completion_length) -> _Resampling:
    """A Trainer's own resampling settings, or a bare Policy's defaults (its task must be given)."""
    if hasattr(trainer_or_policy, "sampler"):
        trainer = trainer_or_policy
        cfg = trainer.cfg
        return _Resampling(
            trainer.policy,
            trainer.sampler,
            trainer.task if task is None else task,
            cfg.temperature if temperature is None else temperature,
            cfg.max_completion_length if max_completion_length is None else max_completion_length,
            {"top_k": cfg.top_k or None, "top_p": cfg.top_p},
            trainer.autocast,
        )
    policy = trainer_or_policy
    if task is None:
        raise ValueError("pivot_sensitivity(policy, ...) needs task=: the task that scores the resampled completions")
    tok = policy.tokenizer
    return _Resampling(
        policy,
        Sampler(policy.model, tok.eos_token_id, tok.pad_token_id),
        task,
        1.0 if temperature is None else temperature,
        batch.ids.shape[1] if max_completion_length is None else max_completion_length,
        {},
        contextlib.nullcontext,
    )
