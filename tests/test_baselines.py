"""The papers' baselines run from the same config and change what they claim to change."""

import pandas as pd
import pytest
import torch

from workbench import RunConfig, Trainer
from workbench.methods import get

QUICK = dict(num_prompts=2, num_generations=4, max_completion_length=20, seed=4)


@pytest.mark.parametrize("method", ["entropy_bonus", "clip_higher", "top_entropy", "entropy_advantage", "clip_cov", "kl_cov"])
def test_each_baseline_trains(method):
    trainer = Trainer(RunConfig(**QUICK, method=method))
    trainer.run(2, progress=False)
    assert trainer.history["loss"].notna().all()


COEFFICIENT_BASELINES = [("entropy_bonus", "entropy_coef", 0.01, 0.0), ("clip_higher", "epsilon_high", 0.28, 0.2),
                         ("top_entropy", "top_entropy_quantile", 0.2, 1.0)]


@pytest.mark.parametrize("method,field,own,plain", COEFFICIENT_BASELINES)
def test_a_coefficient_baseline_fills_its_setting_into_the_config(method, field, own, plain):
    cfg = RunConfig(method=method)
    assert getattr(cfg, field) == own and f"{field}: {own}" in cfg.to_yaml()  # config.yaml records what trains
    assert get(method)(cfg).loss_settings()[field] == own
    mine = RunConfig(method=method, **{field: plain})  # an explicit value is kept, the plain one included
    assert getattr(mine, field) == plain and get(method)(mine).loss_settings()[field] == plain
    assert getattr(cfg.replace(method="grpo"), field) == getattr(RunConfig(), field)  # GRPO's own, not the baseline's
    assert getattr(RunConfig().replace(method=method), field) == own


def _metrics(cfg: RunConfig, steps: int = 2) -> pd.DataFrame:
    trainer = Trainer(cfg)
    trainer.run(steps, progress=False)
    timings = [c for c in trainer.history if c == "step_time" or c.endswith("_s")]
    return trainer.history.drop(columns=timings)


@pytest.mark.parametrize("method,field,own,plain", [b for b in COEFFICIENT_BASELINES if b[0] != "clip_higher"])
def test_a_baseline_set_to_the_plain_value_trains_as_grpo(method, field, own, plain):
    """entropy_coef=0 switches the bonus off, top_entropy_quantile=1 trains every token: the metrics
    are GRPO's to the last bit, and the baseline's own setting changes them. (clip_higher trains as
    GRPO at num_iterations=1 whatever its clip: docs/methods.md.)"""
    grpo = _metrics(RunConfig(**QUICK))
    pd.testing.assert_frame_equal(_metrics(RunConfig(**QUICK, method=method, **{field: plain})), grpo)
    assert not _metrics(RunConfig(**QUICK, method=method), steps=1)["loss"].equals(grpo["loss"].head(1))


def test_entropy_advantage_shapes_token_advantages():
    trainer = Trainer(RunConfig(**QUICK, method="entropy_advantage"))
    for phase in trainer.phases():
        if phase.name == "advantage":
            b = phase.batch
            expected = (b.advantages[:, None] + torch.minimum(0.4 * b.entropy, b.advantages.abs()[:, None] / 2)) * b.mask
            assert torch.allclose(b.token_advantages, expected)


def test_kl_cov_loss_by_hand():
    method = get("kl_cov")(RunConfig(method="kl_cov", method_options={"ratio": 0.25, "kl_coef": 1.0}))
    logp = torch.log(torch.tensor([[0.5, 0.2], [0.9, 0.1]]))
    old = torch.log(torch.tensor([[0.4, 0.2], [0.9, 0.2]]))
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 2)
    loss, clipped = method.token_loss(logp, old, adv, mask, {})
    # cov = (A - 0)(logp - mean logp); N = 4, ratio 0.25 -> 1 token: the largest cov.
    # logp = [-.693, -1.609, -.105, -2.303], mean -1.178: cov = [.485, -.431, -1.073, 1.125] -> token (1, 1)
    rho = (logp - old).exp()
    expected = -adv[:, None] * rho
    expected[1, 1] += (logp[1, 1] - old[1, 1]).abs()
    assert torch.allclose(loss, expected) and not clipped.any()


def test_clip_cov_zeroes_selected_tokens():
    method = get("clip_cov")(RunConfig(method="clip_cov", method_options={"ratio": 0.5, "cov_low": 0.1, "cov_high": 5.0}))
    logp = torch.log(torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    adv = torch.tensor([2.0, -2.0])
    settings = {"epsilon": 0.2, "epsilon_high": None}
    loss, _ = method.token_loss(logp, logp, adv, torch.ones(2, 2), settings, torch.Generator().manual_seed(0))
    # logp = [-.105, -2.303, -2.303, -.105], mean -1.204; A = [2, 2, -2, -2], mean 0
    # cov = [2.198, -2.198, 2.198, -2.198]: (0,0) and (1,0) qualify; ratio 0.5 of 4 -> both zeroed
    assert loss[0, 0] == 0 and loss[1, 0] == 0 and loss[0, 1] != 0 and loss[1, 1] != 0
