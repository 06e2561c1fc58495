"""Policy Split: the high-entropy bonus by hand, both clamp forms, the four quarters, the phases."""

import math

import pytest
import torch

from workbench import ConfigError, RunConfig, Trainer
from workbench.methods.policy_split import HIGH_ENTROPY_PROMPT, high_entropy_bonus

QUICK = dict(num_prompts=2, num_generations=4, max_completion_length=20, seed=3, method="policy_split")


def hand_example():
    # one group of 2 rows x 2 tokens, all valid; alpha = 0.5
    logp_he = torch.log(torch.tensor([[0.5, 0.25], [0.125, 1.0]]))
    logp_n = torch.log(torch.tensor([[0.5, 0.25], [0.5, 1.0]]))
    mask = torch.ones(2, 2)
    # b = -0.5 logp_he - 0.5 logp_n = [[ln2, ln4], [(ln8 + ln2)/2 = ln4, 0]] = ln2 * [[1, 2], [2, 0]]
    # mean = ln2 * 1.25, unbiased std = ln2 * sqrt(((-.25)^2 + .75^2 + .75^2 + 1.25^2) / 3) = ln2 * 0.9574
    b = torch.tensor([[1.0, 2.0], [2.0, 0.0]])
    standardized = (b - 1.25) / 0.957427  # ln2 cancels (up to the 1e-6)
    return logp_he, logp_n, mask, standardized


def test_bonus_code_form_scales_then_clamps():
    logp_he, logp_n, mask, z = hand_example()
    adv = torch.tensor([1.0, -0.02])
    bonus = high_entropy_bonus(adv, logp_he, logp_n, mask, alpha=0.5, eta=0.03, kappa=2.0, clamp_form="code")
    # row 0: |A|/kappa = 0.5, eta*z within it; row 1: bound 0.01
    expected = torch.stack([0.03 * z[0], (0.03 * z[1]).clamp(-0.01, 0.01)])
    assert torch.allclose(bonus, expected, atol=1e-5)


def test_bonus_paper_form_clamps_then_scales():
    logp_he, logp_n, mask, z = hand_example()
    adv = torch.tensor([1.0, -0.02])
    bonus = high_entropy_bonus(adv, logp_he, logp_n, mask, clamp_form="paper")
    expected = torch.stack([0.03 * z[0].clamp(-0.5, 0.5), 0.03 * z[1].clamp(-0.01, 0.01)])
    assert torch.allclose(bonus, expected, atol=1e-5)
    assert not torch.allclose(bonus, high_entropy_bonus(adv, logp_he, logp_n, mask, clamp_form="code"))


def test_zero_spread_gives_zero_bonus_and_sign_is_preserved():
    torch.manual_seed(0)
    logp_he, logp_n = -torch.rand(4, 6) * 3, -torch.rand(4, 6) * 3
    mask = torch.ones(4, 6)
    mask[2, 3:] = 0
    assert torch.equal(high_entropy_bonus(torch.zeros(4), logp_he, logp_n, mask), torch.zeros(4, 6))
    adv = torch.tensor([0.7, -0.3, 1e-3, -2.0])
    # code form: |bonus| <= |A|/kappa for any eta; paper form: |bonus| <= eta |A|/kappa, below |A| for eta < kappa
    for form, eta in (("code", 10.0), ("paper", 1.9)):
        total = adv[:, None] + high_entropy_bonus(adv, logp_he, logp_n, mask, eta=eta, clamp_form=form)
        assert (torch.sign(total[mask.bool()]) == torch.sign(adv[:, None].expand(4, 6)[mask.bool()])).all()
        assert (high_entropy_bonus(adv, logp_he, logp_n, mask, clamp_form=form)[~mask.bool()] == 0).all()


def test_phases_four_quarters_and_metrics():
    trainer = Trainer(RunConfig(**QUICK))
    names = [p.name for p in trainer.phases()]
    assert names == ["sample_normal", "sample_high_entropy", "score", "advantage", "update", "metrics"]
    batch = trainer.last_batch
    assert batch.mode.count("normal") == batch.mode.count("high_entropy") == 4
    train = batch.rows_to_train()
    assert len(train) == 2 * len(batch)
    # the same token ids in both contexts, the HE context after the system prompt
    assert torch.equal(train.ids[: len(batch)], train.ids[len(batch):])
    prefix = trainer.policy.encode([HIGH_ENTROPY_PROMPT + "\n"])[0]
    assert train.prompt_ids[len(batch)][: len(prefix)] == prefix and train.prompt_ids[0][: len(prefix)] != prefix
    m = trainer.history.iloc[-1]
    for key in ("normal_accuracy", "high_entropy_accuracy", "normal_entropy", "high_entropy_entropy",
                "kl_normal_to_other", "kl_high_entropy_to_other", "normal_unique_correct_answers"):
        assert math.isfinite(m[key]), key
    assert "he_bonus" in batch.extras


def test_trains_five_steps_and_evaluates_in_both_modes():
    trainer = Trainer(RunConfig(**QUICK))
    trainer.run(5, progress=False)
    assert trainer.history["loss"].notna().all() and len(trainer.history) == 5
    for mode in ("normal", "high_entropy"):
        r = trainer.evaluate("test", k=(1, 2), n_samples=2, num_prompts=2, mode=mode)
        assert 0 <= r["pass@1"] <= r["pass@2"] <= 1


def test_config_errors():
    with pytest.raises(ConfigError, match="num_generations=3.*even"):
        RunConfig(method="policy_split", num_generations=3)
    with pytest.raises(ConfigError, match="clamp_form"):
        RunConfig(method="policy_split", method_options={"clamp_form": "both"})


def official_normal_context_term(logp_q1, logp_q4, mask, alpha, eta2, adv, kappa):
    """The official code's term on normal-context rows (BITHLP/PolicySplit,
    ray_entropy_rl_trainer_v6.py), transcribed loop by loop: quarter 1 (normal context) mixed
    with quarter 4 (the same responses in the HE context), z-scored over the group's valid
    tokens (torch.std: unbiased, + 1e-6), times -eta2, clamped by |A| / kappa."""
    entropy_loss_org = alpha * -logp_q1 + (1 - alpha) * -logp_q4
    values = entropy_loss_org[mask.bool()]
    z = (entropy_loss_org - values.mean()) / (values.std() + 1e-6) * mask
    internal = -eta2 * z
    bound = adv.abs()[:, None] / kappa
    return torch.clamp(internal, -bound, bound)


def test_eta2_is_the_official_codes_normal_context_penalty_by_hand():
    logp_he, logp_n, mask, z = hand_example()  # b_N = -0.5 logp_N - 0.5 logp_HE: the same b by symmetry
    adv = torch.tensor([1.0, -0.02])
    penalty = high_entropy_bonus(adv, logp_n, logp_he, mask, alpha=0.5, eta=0.05, kappa=2.0)
    assert torch.allclose(penalty, torch.stack([0.05 * z[0], (0.05 * z[1]).clamp(-0.01, 0.01)]), atol=1e-5)
    # against the official formula with alpha != 1/2, where the order of the contexts matters
    torch.manual_seed(1)
    logp_he, logp_n = -torch.rand(4, 5) * 3, -torch.rand(4, 5) * 3
    mask = torch.ones(4, 5)
    mask[1, 3:] = 0
    adv = torch.tensor([0.9, -0.4, 0.05, -1.2])
    official = official_normal_context_term(logp_n, logp_he, mask, alpha=0.8, eta2=0.1, adv=adv, kappa=2.0)
    ours = -high_entropy_bonus(adv, logp_n, logp_he, mask, alpha=0.8, eta=0.1, kappa=2.0)
    assert torch.allclose(ours, official, atol=1e-6)
    assert not torch.allclose(ours, -high_entropy_bonus(adv, logp_he, logp_n, mask, alpha=0.8, eta=0.1, kappa=2.0))


def test_eta2_lowers_normal_context_advantages_and_is_off_by_default():
    for eta2 in (0.0, 0.1):
        trainer = Trainer(RunConfig(**QUICK, method_options={"eta2": eta2}))
        trainer.step()
        batch = trainer.last_batch
        train = batch.rows_to_train()
        n = len(batch)
        base = batch.advantages[:, None] * batch.mask
        penalty = batch.extras["normal_penalty"]
        assert torch.allclose(train.token_advantages[:n], base - penalty)  # normal-context rows
        assert torch.allclose(train.token_advantages[n:], base + batch.extras["he_bonus"])  # HE-context rows
        if eta2 == 0:
            assert (penalty == 0).all()
        else:
            rows = batch.group_rows()[0]
            expected = high_entropy_bonus(batch.advantages[rows], batch.extras["logp_in_normal"][rows],
                                          batch.extras["logp_in_high_entropy"][rows], batch.mask[rows], 0.5, 0.1, 2.0)
            assert torch.equal(penalty[rows], expected) and penalty.abs().sum() > 0
    with pytest.raises(ConfigError, match="method_options.eta2=-0.1"):
        RunConfig(method="policy_split", method_options={"eta2": -0.1})
