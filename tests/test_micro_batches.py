"""The update's micro-batches: rows grouped by length, a token budget, the same gradient."""

import itertools
import random

import pytest
import torch

from workbench import RunConfig, Trainer
from workbench.engine import update
from workbench.engine.update import micro_batches


def cost(runs, lengths, overhead):
    return sum(overhead + len(run) * max(lengths[i] for i in run) for run in runs)


def brute_force_best(lengths, max_tokens, overhead):
    """Least cost over every cut of the length-sorted rows into contiguous runs."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    best = float("inf")
    for mask in itertools.product([0, 1], repeat=len(order) - 1):
        runs, start = [], 0
        for k, cut in enumerate(mask, start=1):
            if cut:
                runs.append(order[start:k])
                start = k
        runs.append(order[start:])
        if all(len(r) == 1 or len(r) * lengths[r[0]] <= max_tokens for r in runs):
            best = min(best, cost(runs, lengths, overhead))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_micro_batches_cover_every_row_once_within_budget_at_least_cost(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 40) for _ in range(9)]
    max_tokens, overhead = rng.choice([40, 80, 400]), rng.choice([0, 16, 64])
    runs = micro_batches(lengths, max_tokens, overhead)
    assert sorted(i for run in runs for i in run) == list(range(len(lengths)))
    assert all(len(run) == 1 or len(run) * max(lengths[i] for i in run) <= max_tokens for run in runs)
    assert cost(runs, lengths, overhead) == brute_force_best(lengths, max_tokens, overhead)


def test_short_rows_stop_paying_for_long_ones():
    lengths = [32] * 8 + [12] * 56  # a few rows hit the length limit, most stop early
    runs = micro_batches(lengths, max_tokens=4096, overhead_tokens=256)
    padded = sum(len(run) * max(lengths[i] for i in run) for run in runs)
    assert len(runs) == 2 and padded == 8 * 32 + 56 * 12  # against 64 x 32 = 2048 in one pass
    assert micro_batches([32] * 64, max_tokens=1024) == [list(range(32)), list(range(32, 64))]
    assert micro_batches([500, 3], max_tokens=100) == [[0], [1]]  # a row longer than the budget runs alone


@pytest.mark.parametrize("method", ["grpo", "policy_split"])
def test_a_small_token_budget_gives_the_same_gradient(method):
    """Micro-batching is bookkeeping: the gradient is the one of the whole batch."""
    runs = []
    for budget in (1 << 20, 24):
        cfg = RunConfig(method=method, num_prompts=3, num_generations=4, max_completion_length=16, seed=3,
                        micro_batch_tokens=budget)
        trainer = Trainer(cfg)
        if budget == 24:
            assert len(update.split_into_micro_batches(trainer.cfg, _sampled(trainer))) > 2
        grads = {}
        step = trainer.optimizer.step

        def capture(*args, **kwargs):
            grads.update({n: p.grad.clone() for n, p in trainer.policy.trainable_parameters().items()})
            return step(*args, **kwargs)

        trainer.optimizer.step = capture
        runs.append((grads, trainer.step().metrics["loss"]))
    (whole, loss_whole), (split, loss_split) = runs
    assert abs(loss_whole - loss_split) < 1e-6
    scale = max(float(g.abs().max()) for g in whole.values())
    assert scale > 0
    assert max(float((whole[k] - split[k]).abs().max()) for k in whole) < 1e-5 * scale


def _sampled(trainer):
    return trainer.sample_group(trainer.train_problems(), trainer.cfg.num_generations)


def test_micro_batches_never_mix_contexts_or_stages():
    trainer = Trainer(RunConfig(method="eepo", num_prompts=2, num_generations=4, max_completion_length=16,
                                micro_batch_tokens=16, method_options={"gate": "always"}))
    for phase in trainer.phases():
        if phase.name == "advantage":
            batch = phase.batch.rows_to_train()
            for rows in update.split_into_micro_batches(trainer.cfg, batch):
                assert len({(batch.mode[i], batch.stage[i]) for i in rows.tolist()}) == 1
    assert torch.isfinite(torch.tensor(trainer.history["loss"].iloc[-1]))


def test_kl_telemetry_at_beta_zero_measures_one_response_per_group_exactly():
    """At beta 0 the KL is telemetry: it is the exact k3 KL over one row per group."""
    from workbench import core

    trainer = Trainer(RunConfig(num_prompts=3, num_generations=4, max_completion_length=16, seed=2, learning_rate=5e-2))
    trainer.step()
    batch = None
    for phase in trainer.phases():
        if phase.name == "advantage":
            batch = phase.batch
            chosen = update.one_response_per_group(batch)
            assert chosen.sum() == 3 and len(set(batch.group[chosen].tolist())) == 3
            rows = torch.nonzero(chosen).flatten()
            with torch.no_grad():
                policy = trainer.policy.token_logprobs([batch.prompt_ids[i] for i in rows], batch.ids[rows],
                                                       with_entropy=False)[0]
                with trainer.policy.reference():
                    ref = trainer.policy.token_logprobs([batch.prompt_ids[i] for i in rows], batch.ids[rows],
                                                        with_entropy=False)[0]
            mask = batch.mask[rows]
            expected = float((core.kl_k3(policy, ref) * mask).sum() / mask.sum())
    kl = trainer.history["kl"].iloc[-1]
    assert expected > 1e-4 and kl == pytest.approx(expected, rel=1e-3)
