"""W-REINFORCE and Pass@k Training against numbers computed by hand from the papers' formulas
(float64 here, never through the workbench), and both methods training on both engines."""

from __future__ import annotations

import math

import pytest
import torch

from workbench import RunConfig, Trainer, core
from workbench.config import ConfigError


def test_w_reinforce_weighs_correct_responses_by_lambda_and_takes_one_from_the_rest():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.3, 0.7])
    success = rewards >= 0.5
    # the paper's code on {0, 1} rewards: lambda for a correct response, -1 for an incorrect one
    expected = [0.1 * 1.0, 0.0 - 1.0, 0.1 * 1.0, 0.3 - 1.0, 0.1 * 0.7]
    assert core.negative_reinforce_advantages(rewards, success, 0.1).tolist() == pytest.approx(expected)
    # lambda = 1: REINFORCE on +1 / -1, no baseline (a group all correct still gets +1 each)
    assert core.negative_reinforce_advantages(torch.ones(4), torch.ones(4, dtype=torch.bool), 1.0).tolist() == [1.0] * 4
    # lambda = 0: NSR, only the incorrect responses move
    assert core.negative_reinforce_advantages(rewards, success, 0.0).tolist() == pytest.approx(
        [0.0, -1.0, 0.0, -0.7, 0.0]
    )


def _passk_by_hand(n: int, c: int, k: int) -> tuple[float, float]:
    rho = 1 - math.comb(n - c, k) / math.comb(n, k)
    sigma = math.sqrt(rho * (1 - rho))
    others_wrong = math.comb(n - c - 1, k - 1) / math.comb(n - 1, k - 1) if c < n else 0.0
    return (1 - rho) / (sigma + 1e-6), (1 - rho - others_wrong) / (sigma + 1e-6)


def test_passk_advantages_are_the_papers_analytic_form():
    correct = torch.tensor([[True, False, False, False], [True, True, False, False], [False] * 4, [True] * 4])
    got = core.passk_advantages(correct, k=2)
    # one correct of 4, k = 2: rho = 1 - C(3,2)/C(4,2) = 0.5, sigma = 0.5,
    # A+ = 0.5 / 0.5, A- = (1 - 0.5 - C(2,1)/C(3,1)) / 0.5 = -1/3
    assert got[0].tolist() == pytest.approx([1.0, -1 / 3, -1 / 3, -1 / 3], abs=1e-5)
    # two of 4: rho = 5/6, sigma = sqrt(5)/6; A+ = (1/6) / sigma = 1/sqrt(5), A- = (1 - 5/6 - 1/3) / sigma
    assert got[1].tolist() == pytest.approx([1 / math.sqrt(5)] * 2 + [-1 / math.sqrt(5)] * 2, abs=1e-5)
    assert got[2].tolist() == [0.0] * 4 and got[3].tolist() == [0.0] * 4  # no spread, no signal
    for c in range(5):
        rows = torch.tensor([[i < c for i in range(8)]])
        positive, negative = _passk_by_hand(8, c, 4)
        assert core.passk_advantages(rows, k=4)[0].tolist() == pytest.approx([positive] * c + [negative] * (8 - c), rel=1e-5)


def test_passk_with_k_1_is_grpo_with_the_groups_population_std():
    correct = torch.tensor([[True, False, False, False]])
    mean, std = 0.25, math.sqrt(0.25 * 0.75)
    assert core.passk_advantages(correct, k=1)[0].tolist() == pytest.approx(
        [(1 - mean) / std, (0 - mean) / std, (0 - mean) / std, (0 - mean) / std], rel=1e-5
    )


def test_k_above_the_group_size_is_refused():
    with pytest.raises(ConfigError, match=r"method_options.k=8 is not allowed: an integer from 1 to num_generations - 1 = 7"):
        RunConfig(method="passk_training", method_options={"k": 8})
    # k = G: every group's pass@k is 1 (a correct response) or 0, so every advantage is 0
    assert core.passk_advantages(torch.tensor([[True, False, False, False]]), k=4).abs().max() == 0


@pytest.mark.parametrize("method", ["w_reinforce", "passk_training"])
def test_each_trains_on_the_workbench_engine_with_its_advantages(method):
    options = {"k": 2} if method == "passk_training" else {}
    trainer = Trainer(RunConfig(method=method, num_prompts=2, num_generations=4, max_completion_length=8, threads=1,
                                method_options=options))
    seen = []
    trainer.subscribe(lambda p: seen.append(p.batch) if p.name == "advantage" else None)
    trainer.run(2, progress=False)
    batch = seen[-1]
    success = batch.scored_rewards >= 0.5
    if method == "w_reinforce":
        assert torch.allclose(batch.advantages, torch.where(success, 0.1 * batch.scored_rewards, batch.scored_rewards - 1))
    else:
        for g in range(batch.num_groups):
            rows = (batch.group == g).nonzero().flatten()
            c = int(success[rows].sum())
            positive, negative = _passk_by_hand(4, c, 2)
            expected = torch.tensor([positive if s else negative for s in success[rows].tolist()])
            assert torch.allclose(batch.advantages[rows].double(), expected.double(), atol=1e-5)


@pytest.mark.parametrize("method", ["w_reinforce", "passk_training"])
def test_each_trains_on_the_trl_engine(method, tmp_path):
    pytest.importorskip("trl", reason="the TRL backend needs the [scale] extra")
    from workbench.integrations.trl import WorkbenchGRPOTrainer
    from workbench.run.store import RunStore

    options = {"k": 2} if method == "passk_training" else {}
    cfg = RunConfig(method=method, num_prompts=2, num_generations=4, max_completion_length=8, threads=1,
                    method_options=options)
    WorkbenchGRPOTrainer(cfg, tmp_path / "run", steps=2).train()
    store = RunStore(tmp_path / "run")
    assert store.config().method == method and [r["step"] for r in store.read_metrics()] == [0, 1]
    frame = store.read_rollouts(1)
    success = frame["reward"] >= 0.5
    if method == "w_reinforce":  # the advantages the loss used, recorded with the rollouts
        expected = [0.1 * r if s else r - 1 for r, s in zip(frame["reward"], success)]
        assert frame["advantage"].tolist() == pytest.approx(expected, abs=1e-6)
