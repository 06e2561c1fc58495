"""Issue 34 item 2: the metrics users ask for, on both engines: groups with no reward spread
(TRL's ``frac_reward_zero_std``), the share of high-entropy tokens, the sampler against the training
pass (TRL's ``sampling/*``), the entropy coefficient the loss used, and per-token KL to the reference."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from workbench import Policy, RunConfig, Trainer, core
from workbench.metrics.entropy import HIGH_ENTROPY_THRESHOLD
from workbench.run.store import RunStore

TINY = dict(num_prompts=2, num_generations=4, max_completion_length=12, threads=1)
SAMPLING = (
    "sampling_logp_difference_mean",
    "sampling_logp_difference_max",
    "importance_sampling_ratio_min",
    "importance_sampling_ratio_mean",
    "importance_sampling_ratio_max",
)


def test_mismatch_totals_by_hand():
    train = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -0.2, 0.0]], dtype=torch.float64)
    sampler = torch.tensor([[-1.2, -2.0, float("nan")], [-0.1, 0.3, -9.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # counted: (0.2, 0, 0, -0.5); the NaN (unknown) and the masked token are not
    d = [0.2, 0.0, 0.0, -0.5]
    totals = core.sampler_mismatch_totals(train, sampler, mask)
    expected = [0.7, 0.5, 4.0, sum(math.exp(x) for x in d), math.exp(-0.5), math.exp(0.2)]
    assert totals.tolist() == pytest.approx(expected, rel=1e-6)
    # joined over micro-batches: sums add, extremes reduce; a micro-batch of no known token changes nothing
    other = core.sampler_mismatch_totals(train[:1, :1], train[:1, :1] + 1.0, mask[:1, :1])
    joined = core.combine_mismatch_totals(torch.stack([totals, other, core.no_mismatch_totals()]))
    assert joined.tolist() == pytest.approx(
        [1.7, 1.0, 5.0, expected[3] + math.exp(-1.0), math.exp(-1.0), math.exp(0.2)], rel=1e-6
    )


def test_rollout_metrics_by_hand():
    trainer = Trainer(RunConfig(**TINY, seed=3))
    result = trainer.step()
    batch, row = result.batch, result.metrics
    rewards = batch.scored_rewards.view(batch.num_groups, -1)
    no_spread = sum(float(len(set(g.tolist())) == 1) for g in rewards) / batch.num_groups
    assert row["frac_reward_zero_std"] == pytest.approx(no_spread)
    valid = batch.entropy[batch.mask.bool()].tolist()
    assert row["high_entropy_token_fraction"] == pytest.approx(
        sum(h > HIGH_ENTROPY_THRESHOLD for h in valid) / len(valid)
    )
    assert row["entropy_coef"] == 0.0 and row["beta"] == 0.0


def _cut_off(token_ids, lengths, limit: int, eos: int) -> float:
    """The share of responses at the length limit whose last token is not EOS, by hand."""
    cut = [n == limit and int(ids[n - 1]) != eos for ids, n in zip(token_ids, lengths)]
    return sum(cut) / len(cut)


def test_the_share_cut_off_at_the_length_limit_counts_the_responses_without_eos():
    for limit in (3, 24):  # the embedded model ends few responses in 3 tokens, most in 24
        trainer = Trainer(RunConfig(**{**TINY, "max_completion_length": limit}, seed=3))
        result = trainer.step()
        batch, row = result.batch, result.metrics
        lengths = batch.mask.sum(-1).long().tolist()
        share = _cut_off(batch.ids, lengths, limit, trainer.policy.tokenizer.eos_token_id)
        assert row["truncated_fraction"] == pytest.approx(share)
        assert share > 0.5 if limit == 3 else share < 0.5


def test_a_run_written_before_the_rename_reads_under_the_new_name(tmp_path):
    run = tmp_path / "run"
    Trainer(RunConfig(**TINY), out_dir=run).run(1, progress=False)
    path = RunStore(run).metrics_path
    row = json.loads(path.read_text().splitlines()[0])
    row["zero_spread_groups"] = row.pop("frac_reward_zero_std")
    path.write_text(json.dumps(row) + "\n")
    (read,) = RunStore(run).read_metrics()
    assert read["frac_reward_zero_std"] == row["zero_spread_groups"] and "zero_spread_groups" not in read


def _shifted(trainer, shift: float):
    """Subscribe: the sampler's log-probs of the first response's tokens moved by ``shift`` after
    sampling, as a bf16 or quantised sampler would move them."""

    def on_phase(phase):
        if phase.name == "advantage":
            phase.batch.logprobs[0] += shift * phase.batch.mask[0]

    trainer.subscribe(on_phase)


def test_the_trainer_measures_its_sampler_against_the_training_pass():
    exact = Trainer(RunConfig(**TINY))
    row = exact.step().metrics
    # float32 on this CPU: the sampler's cached decoding and the training pass agree to rounding
    assert row["sampling_logp_difference_mean"] < 1e-5 and row["sampling_logp_difference_max"] < 1e-4
    assert row["importance_sampling_ratio_min"] == pytest.approx(1.0, abs=1e-4)
    assert row["importance_sampling_ratio_max"] == pytest.approx(1.0, abs=1e-4)
    shifted = Trainer(RunConfig(**TINY))
    _shifted(shifted, 0.25)
    result = shifted.step()
    row, batch = result.metrics, result.batch
    tokens, first = int(batch.mask.sum()), int(batch.mask[0].sum())
    assert row["sampling_logp_difference_max"] == pytest.approx(0.25, abs=1e-4)
    assert row["sampling_logp_difference_mean"] == pytest.approx(0.25 * first / tokens, abs=1e-4)
    # the sampler's p is higher by exp(0.25): ratio p(training) / p(sampler) = exp(-0.25) on those tokens
    assert row["importance_sampling_ratio_min"] == pytest.approx(math.exp(-0.25), abs=1e-3)
    assert row["importance_sampling_ratio_mean"] == pytest.approx(
        (first * math.exp(-0.25) + tokens - first) / tokens, abs=1e-4
    )


def test_policy_split_compares_each_response_in_the_context_it_was_sampled_in():
    row = Trainer(RunConfig(**TINY, method="policy_split")).step().metrics
    # each response also trains in the other context, where its sampler log-probs do not exist
    assert row["sampling_logp_difference_max"] < 1e-4


def test_per_token_kl_is_recorded_where_the_reference_ran(tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(RunConfig(**TINY, beta=0.04), out_dir=run)  # beta > 0: every row's KL is in the loss
    trainer.run(1, progress=False)
    frame = RunStore(run).read_rollouts(0)
    assert all(kl is not None and len(kl) == n for kl, n in zip(frame["kl"], frame["length"]))
    tokens = sum(frame["length"])
    mean = sum(float(kl.sum()) for kl in frame["kl"]) / tokens
    assert trainer.records[0]["kl"] == pytest.approx(mean, rel=1e-4)  # the step's KL is the tokens' mean


trl = pytest.mark.skipif(
    os.environ.get("CI") != "true" and __import__("importlib").util.find_spec("trl") is None,
    reason="the TRL backend needs the [scale] extra",
)


@trl
def test_the_trl_engine_records_the_same_metrics(tmp_path):
    from workbench.integrations.trl import WorkbenchGRPOTrainer

    class ShiftedSampler(WorkbenchGRPOTrainer):
        def rollout_batch(self, out):
            batch = super().rollout_batch(out)
            batch.logprobs[0] += 0.25 * batch.mask[0]  # the first response's sampler log-probs
            return batch

    cfg = RunConfig(**TINY, beta=0.04)
    ShiftedSampler(cfg, tmp_path / "run", steps=2).train()
    store = RunStore(tmp_path / "run")
    rows = store.read_metrics()
    for row in rows:
        assert row["sampling_logp_difference_max"] == pytest.approx(0.25, abs=2e-3)
        assert row["importance_sampling_ratio_min"] == pytest.approx(math.exp(-0.25), abs=5e-3)
        assert 0 < row["high_entropy_token_fraction"] < 1 and "frac_reward_zero_std" in row
        assert row["entropy_coef"] == 0.0 and row["beta"] == 0.04
    frame = store.read_rollouts(1)  # TRL ran the reference (beta > 0): every token's KL
    assert all(kl is not None and len(kl) == n for kl, n in zip(frame["kl"], frame["length"]))
    eos = Policy.from_pretrained("tiny").tokenizer.eos_token_id  # TRL cut off the rows without it
    share = _cut_off(frame["token_ids"], frame["length"], TINY["max_completion_length"], eos)
    assert rows[1]["truncated_fraction"] == pytest.approx(share)


@trl
def test_a_trl_script_with_adaptive_entropy_records_the_coefficient_trl_applied(tmp_path):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOConfig

    from workbench.integrations.trl import WorkbenchGRPOTrainer
    from workbench.models.loading import resolve

    args = GRPOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        max_steps=3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        use_adaptive_entropy=True,
        entropy_target=50.0,  # every step at or below: TRL's controller raises the coefficient each step
        entropy_coef=0.0,
        entropy_coef_delta=0.005,
    )
    dataset = Dataset.from_dict({"prompt": [f"Make {n} from 3 5 7.\n" for n in range(10, 22)]})
    trainer = WorkbenchGRPOTrainer(
        model=str(resolve("tiny")),
        reward_funcs=[lambda completions, **_: [float(len(c) % 2) for c in completions]],
        args=args,
        train_dataset=dataset,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
        run_dir=tmp_path / "run",
    )
    trainer.train()
    rows = RunStore(tmp_path / "run").read_metrics()
    # TRL applies the coefficient of the step before once that step was at or below the target
    assert [r["entropy_coef"] for r in rows] == pytest.approx([0.0, 0.005, 0.01])
    logged = [e["entropy_coef"] for e in trainer.state.log_history if "loss" in e]
    assert logged == pytest.approx([0.005, 0.01, 0.015])  # TRL logs its controller after the step
