"""ERPO: the entropy gate, position-bucket normalisation, token advantages, training on the tiny model."""

import math

import pytest
import torch

from workbench import ConfigError, RunConfig, Trainer, core
from workbench.methods.erpo import bucket_normalize, entropy_gate, position_buckets, token_advantages

QUICK = dict(method="erpo", num_prompts=2, num_generations=4, max_completion_length=16, seed=3)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_entropy_gate_by_hand():
    # valid entropies 0, 0, 2, 0, 0: mean 0.4, population std 0.8 -> z(0) = -0.5, z(2) = 2
    entropy = torch.tensor([[0.0, 0.0, 2.0, 9.0], [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    low, high = sigmoid(5 * -0.5), sigmoid(5 * 2.0)
    expected = torch.tensor([[low, low, high, 0.0], [low, low, 0.0, 0.0]])
    assert torch.allclose(entropy_gate(entropy, mask), expected, atol=1e-5)
    assert torch.allclose(entropy_gate(entropy, mask, 1.0)[0, :3], torch.tensor([sigmoid(-0.5), sigmoid(-0.5), sigmoid(2.0)]),
                          atol=1e-5)


def test_entropy_gate_scores_each_group_alone():
    # group 0: 1, 3 -> z = -1, 1; group 1: 5, 5 -> z = 0 (gate 1/2)
    entropy = torch.tensor([[1.0], [3.0], [5.0], [5.0]])
    gate = entropy_gate(entropy, torch.ones(4, 1), gamma=2.0, group=torch.tensor([0, 0, 1, 1]))
    assert torch.allclose(gate.squeeze(-1), torch.tensor([sigmoid(-2), sigmoid(2), 0.5, 0.5]), atol=1e-5)


def test_position_buckets_are_exact_at_the_boundaries():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    # length 3, K 10: floor(10 t / 3) = 0, 3, 6; length 5, K 5: t / 5 = k / 5 lands in bucket k
    assert position_buckets(mask, 10)[0, :3].tolist() == [0, 3, 6]
    assert position_buckets(mask, 5)[1].tolist() == [0, 1, 2, 3, 4]
    assert position_buckets(mask, 2)[1].tolist() == [0, 0, 0, 1, 1]


def test_bucket_normalize_by_hand_with_padding():
    # K = 2. Row 0 (length 4): buckets 0, 0, 1, 1. Row 1 (length 2): buckets 0, 1; then padding.
    signal = torch.tensor([[1.0, 3.0, 5.0, 7.0], [2.0, 9.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    # bucket 0: 1, 3, 2 -> mean 2, std sqrt(2/3); bucket 1: 5, 7, 9 -> mean 7, std sqrt(8/3)
    z = math.sqrt(1.5)
    expected = torch.tensor([[-z, z, -z, 0.0], [0.0, z, 0.0, 0.0]])
    assert torch.allclose(bucket_normalize(signal, mask, num_buckets=2), expected, atol=1e-5)


def test_zero_variance_bucket_gives_zero():
    signal = torch.tensor([[1.0, 1.0, 5.0, 7.0], [1.0, 9.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    out = bucket_normalize(signal, mask, num_buckets=2)
    z = math.sqrt(1.5)
    assert torch.allclose(out, torch.tensor([[0.0, 0.0, -z, 0.0], [0.0, z, 0.0, 0.0]]), atol=1e-5)
    # one bucket per token: every bucket has one value and std 0
    assert (bucket_normalize(torch.randn(1, 5), torch.ones(1, 5), num_buckets=5) == 0).all()
    # the noise floor is in nats of the unscaled difference: a bucket spread of ~5e-4 nats is
    # rounding under bfloat16's floor (1e-2), and signal under float32's (1e-6, the default)
    noise = torch.tensor([[0.0, 1e-3, 0.0, 1e-3]])
    assert (bucket_normalize(noise, torch.ones(1, 4), num_buckets=1, floor=1e-2) == 0).all()
    assert torch.allclose(bucket_normalize(noise, torch.ones(1, 4), num_buckets=1),
                          torch.tensor([[-1.0, 1.0, -1.0, 1.0]]), atol=1e-2)
    assert (bucket_normalize(noise * 1e-4, torch.ones(1, 4), num_buckets=1) == 0).all()  # 5e-8: float32 rounding


def test_bucket_normalize_within_groups():
    # each row its own group: row 1's bucket 0 holds one value (2) -> 0; bucket 1 one value -> 0
    signal = torch.tensor([[1.0, 3.0, 5.0, 7.0], [2.0, 9.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    out = bucket_normalize(signal, mask, num_buckets=2, group=torch.tensor([0, 1]))
    assert torch.allclose(out, torch.tensor([[-1.0, 1.0, -1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]), atol=1e-5)


ADV = torch.tensor([1.0, -0.5, 0.0])
GATE = torch.tensor([[0.5, 1.0], [0.2, 0.8], [1.0, 1.0]])
PROGRESS = torch.tensor([[2.0, -1.0], [1.0, 1.0], [3.0, 3.0]])
MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])


def test_token_advantages_additive_by_hand():
    out = token_advantages(ADV, GATE, PROGRESS, MASK, eta=0.2)
    # Psi = W sgn(A) s~: row 0 [1, -1]; row 1 -[0.2, 0.8]; row 2 sgn(0) = 0
    expected = torch.tensor([[1.2, 0.8], [-0.5 - 0.2 * 0.2, 0.0], [0.0, 0.0]])
    assert torch.allclose(out, expected, atol=1e-6)


def test_token_advantages_redistribute_by_hand():
    out = token_advantages(ADV, GATE, PROGRESS, MASK, eta=0.2, variant="redistribute")
    # row 0: A |o| W / sum W = 2 [0.5, 1] / 1.5, plus 0.2 * [2, -1]; row 1: |o| = 1, W sum 0.2 -> -0.5 - 0.2
    expected = torch.tensor([[2 / 3 + 0.4, 4 / 3 - 0.2], [-0.7, 0.0], [0.0, 0.0]])
    assert torch.allclose(out, expected, atol=1e-6)
    # without the progress term the sequence's total advantage A |o| is only redistributed
    spread = token_advantages(ADV, GATE, torch.zeros_like(PROGRESS), MASK, variant="redistribute")
    assert torch.allclose(spread.sum(-1), ADV * MASK.sum(-1))


def test_a_group_with_equal_rewards_gets_zero_token_advantages():
    adv = core.group_advantages(torch.tensor([[1.0, 1.0, 1.0]])).squeeze(0)
    for variant in ("additive", "redistribute"):
        out = token_advantages(adv, torch.rand(3, 4), torch.randn(3, 4), torch.ones(3, 4), variant=variant)
        assert (out == 0).all()
    with pytest.raises(ValueError, match="variant='both'"):
        token_advantages(adv, torch.rand(3, 4), torch.randn(3, 4), torch.ones(3, 4), variant="both")


def test_config_errors():
    with pytest.raises(ConfigError, match="method_options.variant='both'.*additive, redistribute"):
        RunConfig(method="erpo", method_options={"variant": "both"})
    with pytest.raises(ConfigError, match="method_options.num_buckets=0"):
        RunConfig(method="erpo", method_options={"num_buckets": 0})
    with pytest.raises(ConfigError, match="method_options.gamma=-1"):
        RunConfig(method="erpo", method_options={"gamma": -1})
    with pytest.raises(ConfigError, match="method_options.kappa"):
        RunConfig(method="erpo", method_options={"kappa": 2})
    with pytest.raises(ConfigError, match="method_options.beta"):  # the z-score divides any scale out
        RunConfig(method="erpo", method_options={"beta": 0.1})
    with pytest.raises(ConfigError, match="method_options.noise_floor=-0.1"):
        RunConfig(method="erpo", method_options={"noise_floor": -0.1})


def test_first_step_has_no_progress_and_records_gate_and_token_advantages():
    trainer = Trainer(RunConfig(**QUICK))
    calls = []
    original = trainer.policy.reference

    def counting():
        calls.append(1)
        return original()

    trainer.policy.reference = counting
    batch = trainer.step().batch
    # ERPO's reference pass is the only one: the trainer's KL term reuses it
    assert len(calls) == 1
    mask = batch.mask
    # LoRA B starts at 0 and both log-probs come from one pass: s = 0 exactly, A_{i,t} = A_i
    assert (batch.extras["erpo_progress"] == 0).all()
    assert torch.equal(batch.token_advantages, batch.advantages[:, None] * mask)
    assert torch.allclose(batch.gate, entropy_gate(batch.entropy, mask, 5.0, group=batch.group))
    assert batch.ref_logprobs.shape == batch.ids.shape


def test_at_step_0_under_bfloat16_erpo_gives_grpos_advantages():
    """On a GPU (bf16 autocast) the sampler and the scoring pass round differently; ERPO takes
    both of its log-probs from the scoring pass, so at step 0 it is GRPO there too."""
    erpo = Trainer(RunConfig(**QUICK, dtype="bfloat16"))
    grpo = Trainer(RunConfig(**{**QUICK, "method": "grpo"}, dtype="bfloat16"))
    e, g = erpo.step().batch, grpo.step().batch
    assert torch.equal(e.ids, g.ids) and torch.equal(e.advantages, g.advantages)  # the same samples
    assert (e.extras["erpo_progress"] == 0).all()
    assert torch.equal(e.token_advantages, g.advantages[:, None] * e.mask)
    # what the sampler's log-probs would have given: bf16 rounding, far above the 1e-3 floor
    sampler_minus_ref = (e.logprobs.float() - e.ref_logprobs)[e.mask.bool()]
    assert sampler_minus_ref.abs().max() > 1e-3 and bucket_normalize(
        e.logprobs.float() - e.ref_logprobs, e.mask, 10, e.group).abs().max() > 0.5


def test_erpo_trains_five_steps():
    trainer = Trainer(RunConfig(**QUICK))
    trainer.run(5, progress=False)
    h = trainer.history
    assert len(h) == 5 and h["loss"].notna().all() and torch.isfinite(torch.tensor(h["loss"].values)).all()
    for key in ("erpo_gate_mean", "erpo_psi_abs_mean", "erpo_gate_at_pivots", "erpo_gate_elsewhere"):
        assert key in h
    b = trainer.last_batch
    valid = b.mask.bool()
    assert b.gate is not None and ((b.gate[valid] > 0) & (b.gate[valid] < 1)).all() and (b.gate[~valid] == 0).all()
    assert b.token_advantages.shape == b.ids.shape and (b.token_advantages[~valid] == 0).all()
    # the adapter has moved: progress is no longer zero, so token advantages differ from A_i
    assert b.extras["erpo_progress"].abs().max() > 0
    frame = b.to_frame(4)
    assert frame["gate"].notna().all() and frame["token_advantage"].notna().all()


def test_redistribute_variant_trains():
    trainer = Trainer(RunConfig(**QUICK, method_options={"variant": "redistribute"}))
    trainer.run(2, progress=False)
    assert trainer.history["loss"].notna().all()
