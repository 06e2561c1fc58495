"""adaptive_entropy: TRL 1.16's adaptive entropy control, replayed from the recorded steps, on both
engines; the rule checked against a hand-run of TRL's update (float64, not through the workbench)."""

from __future__ import annotations

import pytest
import torch

from workbench import RunConfig, Trainer, core
from workbench.config import ConfigError


def trl_rule_by_hand(measured, start, target, delta, low, high):
    """TRL's GRPOTrainer._compute_loss: the coefficient each step applies, and the controller's after it."""
    coef, last, applied = start, float("inf"), []
    for entropy in measured:
        applied.append(coef if last <= target else 0.0)  # from the end of the previous optimizer step
        coef = min(coef + delta, high) if entropy <= target else max(coef - delta, low)
        last = entropy
    return applied, coef


def test_the_controller_replays_trls_rule():
    measured = [0.30, 0.25, 0.18, 0.15, 0.22, 0.19, 0.10]
    applied, _ = trl_rule_by_hand(measured, 0.01, 0.2, 0.005, 0.0, 0.012)
    for t in range(len(measured)):
        assert core.adaptive_entropy_coef(measured[:t], 0.01, 0.2, 0.005, 0.0, 0.012)[1] == pytest.approx(applied[t])
    # by hand: 0.01 -> 0.005 -> 0 (above the target twice), then +0.005 twice, capped at 0.012
    assert applied == pytest.approx([0.0, 0.0, 0.0, 0.005, 0.01, 0.0, 0.01])


def test_bounds_are_checked():
    with pytest.raises(ConfigError, match="entropy_coef_max=0.1 is not allowed: a number >= 0.2"):
        RunConfig(method="adaptive_entropy", method_options={"entropy_coef_min": 0.2, "entropy_coef_max": 0.1})


SMALL = dict(num_prompts=2, num_generations=4, max_completion_length=8, threads=1, method="adaptive_entropy")


def test_the_coefficient_is_recorded_applied_and_resumes_exactly(tmp_path):
    cfg = RunConfig(**SMALL, method_options={"entropy_target": 5.0})  # every step at or below: it rises
    straight = Trainer(cfg)
    straight.run(4, progress=False)
    rows = straight.records
    assert [r["entropy_coef"] for r in rows] == pytest.approx([0.0, 0.005, 0.01, 0.015])
    assert [r["adaptive_entropy_coef"] for r in rows] == pytest.approx([0.0, 0.005, 0.01, 0.015])
    assert all(r["adaptive_entropy_measured"] == pytest.approx(r["entropy_mean"], rel=1e-5) for r in rows)
    # the applied coefficient is the entropy bonus's: the entropy bonus set live to the same values
    # trains the same adapter
    bonus = Trainer(RunConfig(**{**SMALL, "method": "entropy_bonus"}, entropy_coef=0.0))
    for coef in (0.0, 0.005, 0.01, 0.015):
        bonus.set_live(entropy_coef=coef)
        bonus.step()
    state, expected = bonus.policy.adapter_state(), straight.policy.adapter_state()
    assert all(torch.equal(state[k], expected[k]) for k in state)
    run = tmp_path / "run"
    first = Trainer(RunConfig(**SMALL, method_options={"entropy_target": 5.0}, checkpoint_every=1), out_dir=run)
    first.run(2, progress=False)
    first.close()
    resumed = Trainer.resume(run)
    resumed.run(2, progress=False)
    for a, b in zip(resumed.records, rows):
        for key in ("entropy_coef", "adaptive_entropy_coef", "loss", "reward_mean"):
            assert a[key] == pytest.approx(b[key], abs=1e-7), key
    state, expected = resumed.policy.adapter_state(), straight.policy.adapter_state()
    assert all(torch.equal(state[k], expected[k]) for k in state)


def test_the_trl_engine_steers_the_same_coefficient(tmp_path):
    pytest.importorskip("trl", reason="the TRL backend needs the [scale] extra")
    from workbench.integrations.trl import WorkbenchGRPOTrainer
    from workbench.run.store import RunStore

    cfg = RunConfig(**SMALL, method_options={"entropy_target": 5.0})
    WorkbenchGRPOTrainer(cfg, tmp_path / "run", steps=3).train()
    rows = RunStore(tmp_path / "run").read_metrics()
    assert [r["entropy_coef"] for r in rows] == pytest.approx([0.0, 0.005, 0.01])
    # the controller read the step's own token entropy (TRL samples other tokens than the workbench's
    # sampler, so the two engines' rows are not compared here)
    assert all(r["adaptive_entropy_measured"] == pytest.approx(r["entropy_mean"], rel=1e-5) for r in rows)
