"""workbench.core against hand-computed vectors (expected numbers worked out in the comments)."""

import math

import pytest
import torch

from workbench import core

EPS = 1e-4


def close(actual, expected, tol=1e-5):
    expected = torch.as_tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(actual.double(), expected, atol=tol, rtol=tol, equal_nan=True)


# --- group advantages ------------------------------------------------------------------------------
REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 2.0]])
# group means 0.5, 1, 0.5 -> centred:
CENTRED = [[0.5, -0.5, -0.5, 0.5], [0.0] * 4, [-0.5, -0.5, -0.5, 1.5]]


def test_group_advantages_group_scale():
    a = core.group_advantages(REWARDS, "group")
    # group 0: sum of squares 4 * 0.25 = 1, unbiased var 1/3 -> std sqrt(1/3)
    s0 = math.sqrt(1 / 3) + EPS
    # group 2: squares 3 * 0.25 + 2.25 = 3, var 3/3 = 1 -> std 1
    s2 = 1.0 + EPS
    close(a, [[0.5 / s0, -0.5 / s0, -0.5 / s0, 0.5 / s0], [0.0] * 4, [-0.5 / s2, -0.5 / s2, -0.5 / s2, 1.5 / s2]])
    assert (a[1] == 0).all()


def test_group_advantages_batch_scale():
    a = core.group_advantages(REWARDS, "batch")
    # all 12 rewards: six 1s, one 2 -> sum 8, mean 2/3, sum x^2 = 6 + 4 = 10
    # sum of squared deviations = 10 - 12 * 4/9 = 14/3, unbiased var = (14/3) / 11 = 14/33
    s = math.sqrt(14 / 33) + EPS
    close(a, [[c / s for c in row] for row in CENTRED])
    assert (a[1] == 0).all()


def test_group_advantages_none_scale():
    close(core.group_advantages(REWARDS, "none"), CENTRED)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_equal_group_is_exactly_zero(scale):
    # mean of three 0.1s is not exactly 0.1 in float arithmetic; the result must still be exactly 0
    r = torch.tensor([[0.1, 0.1, 0.1], [0.0, 1.0, 0.0]])
    a = core.group_advantages(r, scale)
    assert (a[0] == 0).all()
    assert (core.group_advantages(torch.tensor([[3.0], [1.0]]), scale) == 0).all()  # single-sample groups


def test_group_advantages_rejects_unknown_scale():
    with pytest.raises(ValueError, match="scale_rewards.*'std'.*group.*batch.*none"):
        core.group_advantages(REWARDS, "std")


# --- PPO clip -------------------------------------------------------------------------------------
def test_ppo_clip_values_clipped_and_gradients():
    # logp_old = 0, so rho = exp(logp); eps = 0.2 -> low 0.8, eps_high = 0.28 -> high 1.28
    rho = torch.tensor([[1.5, 0.5, 1.1], [1.5, 0.5, 1.1]], dtype=torch.float64)
    logp = rho.log().requires_grad_(True)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)  # [B]: broadcast over tokens
    loss, clipped = core.ppo_clip_token_loss(logp, torch.zeros_like(logp), adv, 0.2, 0.28)
    # A=+1: rho 1.5 -> -min(1.5, 1.28) = -1.28 (clipped); 0.5 -> -min(0.5, 0.8) = -0.5; 1.1 -> -1.1
    # A=-1: rho 1.5 -> -min(-1.5, -1.28) = 1.5; 0.5 -> -min(-0.5, -0.8) = 0.8 (clipped); 1.1 -> 1.1
    close(loss.detach(), [[-1.28, -0.5, -1.1], [1.5, 0.8, 1.1]])
    assert clipped.tolist() == [[True, False, False], [False, True, False]]
    # d l / d logp = -A * rho where unclipped, 0 where clipped
    loss.sum().backward()
    close(logp.grad, [[0.0, -0.5, -1.1], [1.5, 0.0, 1.1]])


def test_ppo_clip_epsilon_high_defaults_to_epsilon_and_token_advantages():
    logp = torch.tensor([[math.log(1.25), math.log(1.25)]])
    adv = torch.tensor([[2.0, 0.0]])  # [B, T] form; A = 0 never counts as clipped
    loss, clipped = core.ppo_clip_token_loss(logp, torch.zeros_like(logp), adv, epsilon=0.2)
    # high = 1.2 < 1.25 -> -1.2 * 2 = -2.4 ; A = 0 -> 0
    close(loss, [[-2.4, 0.0]])
    assert clipped.tolist() == [[True, False]]
    # on-policy (logp_old = logp): rho = 1, loss = -A, nothing clipped
    loss, clipped = core.ppo_clip_token_loss(logp, logp, adv)
    close(loss, [[-2.0, 0.0]])
    assert not clipped.any()


# --- aggregation ----------------------------------------------------------------------------------
NAN = float("nan")
TOKEN_LOSS = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, NAN, math.inf, NAN]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    "loss_type, expected",
    [
        ("dapo", 2.5),  # (1 + 2 + 3 + 4) / 4 valid tokens
        ("grpo", 3.0),  # (6 / 3 + 4 / 1) / 2 sequences
        ("dr_grpo", 1.25),  # 10 / (2 sequences * 4)
    ],
)
def test_aggregate_loss(loss_type, expected):
    close(core.aggregate_loss(TOKEN_LOSS, MASK, loss_type, max_completion_length=4), expected)
    close(core.aggregate_loss(TOKEN_LOSS, MASK.bool(), loss_type, max_completion_length=4), expected)
    # nothing valid: 0, not NaN
    assert core.aggregate_loss(TOKEN_LOSS, torch.zeros_like(MASK), loss_type, 4).item() == 0.0


def test_aggregate_loss_errors():
    with pytest.raises(ValueError, match="max_completion_length"):
        core.aggregate_loss(TOKEN_LOSS, MASK, "dr_grpo")
    with pytest.raises(ValueError, match="loss_type.*'bnpo'.*dapo.*grpo.*dr_grpo"):
        core.aggregate_loss(TOKEN_LOSS, MASK, "bnpo")


# --- KL -------------------------------------------------------------------------------------------
def test_kl_k3():
    lp = torch.tensor([-0.3, -2.0])
    assert (core.kl_k3(lp, lp) == 0).all()
    # d = logp_ref - logp = ln 2: 2 - 0.693147 - 1 = 0.306853;  d = -1: e^-1 + 1 - 1 = 0.367879
    logp = torch.tensor([0.0, 0.0])
    ref = torch.tensor([math.log(2.0), -1.0])
    close(core.kl_k3(logp, ref), [0.3068528, 0.3678794])
    torch.manual_seed(0)
    assert (core.kl_k3(torch.randn(100), torch.randn(100)) >= 0).all()


# --- entropy and log-probs ------------------------------------------------------------------------
def test_token_entropy_hand_values():
    # uniform over 8 -> ln 8 = 2.0794415
    close(core.token_entropy(torch.zeros(2, 3, 8)), torch.full((2, 3), math.log(8)))
    # logits [ln 3, 0] -> p = [0.75, 0.25]; H = -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.5623351
    close(core.token_entropy(torch.tensor([[math.log(3.0), 0.0]])), [0.5623351])
    # temperature 2 on [2 ln 3, 0] is the same distribution
    close(core.token_entropy(torch.tensor([[2 * math.log(3.0), 0.0]]), temperature=2.0), [0.5623351])


def test_a_collapsed_distribution_keeps_its_small_entropy_accurate():
    # a peaked distribution over a real vocabulary (H ~ 0.1 nats, what entropy collapse looks like):
    # logsumexp(z) - E_p[z] would subtract two nearly equal numbers and lose H (errors of 10x H
    # measured in float32); summing p log p term by term keeps it within a few percent
    torch.manual_seed(0)
    logits = 50 * torch.randn(64, 49152)
    reference = _ref_logp_entropy(logits, torch.zeros(64, dtype=torch.long), 1.0)[1]
    for entropy in (core.token_entropy(logits), core.entropy_from_logprobs(torch.log_softmax(logits, -1))):
        assert ((entropy.double() - reference).abs() / reference).max() < 0.1


def test_the_sampler_and_the_training_pass_use_the_same_entropy_formula():
    torch.manual_seed(1)
    logits = 4 * torch.randn(5, 300)
    from_sampler = core.entropy_from_logprobs(torch.log_softmax(logits / 0.7, -1))
    close(core.token_entropy(logits, temperature=0.7), from_sampler, tol=1e-6)


def _ref_logp_entropy(logits, ids, temperature):
    logsm = torch.log_softmax(logits.double() / temperature, dim=-1)
    return logsm.gather(-1, ids[..., None]).squeeze(-1), -(logsm.exp() * logsm).sum(-1)


@pytest.mark.parametrize("chunk_size", [1, 2, 4, 7, 1024])
@pytest.mark.parametrize("sliced", [False, True])
def test_chunked_matches_reference_with_gradients(chunk_size, sliced):
    torch.manual_seed(0)
    full = (3 * torch.randn(3, 6, 11)).requires_grad_(True)
    logits = full[:, :-1, :] if sliced else full  # the policy's non-contiguous slice
    ids = torch.randint(0, 11, logits.shape[:-1])
    temperature = 0.7
    w_logp, w_ent = torch.randn(ids.shape), torch.randn(ids.shape)

    logp, ent = core.logprobs_and_entropy(logits, ids, temperature, chunk_size)
    assert logp.dtype == torch.float32 and logp.shape == ids.shape and ent.shape == ids.shape
    (g,) = torch.autograd.grad((logp * w_logp).sum() + (ent * w_ent).sum(), full)

    ref_logp, ref_ent = _ref_logp_entropy(logits, ids, temperature)
    (g_ref,) = torch.autograd.grad((ref_logp * w_logp).sum() + (ref_ent * w_ent).sum(), full, retain_graph=True)
    close(logp, ref_logp.detach())
    close(ent, ref_ent.detach())
    close(g, g_ref)

    ent_only = core.token_entropy(logits, temperature, chunk_size)
    close(ent_only, ref_ent.detach())
    (g_ent,) = torch.autograd.grad((ent_only * w_ent).sum(), full)
    (g_ent_ref,) = torch.autograd.grad((ref_ent * w_ent).sum(), full)
    close(g_ent, g_ent_ref)


@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.3])
def test_selective_log_softmax_matches_log_softmax_gather(temperature):
    torch.manual_seed(1)
    logits = torch.randn(4, 9, 17, requires_grad=True)
    ids = torch.randint(0, 17, (4, 9))
    out = core.selective_log_softmax(logits, ids, temperature)
    ref = torch.log_softmax(logits / temperature, dim=-1).gather(-1, ids[..., None]).squeeze(-1)
    close(out, ref.detach())
    (g,) = torch.autograd.grad(out.sum(), logits)
    (g_ref,) = torch.autograd.grad(ref.sum(), logits)
    close(g, g_ref)
    close(core.selective_log_softmax(logits[:, 1:], ids[:, 1:], temperature, chunk_size=3), ref[:, 1:].detach())


def test_bf16_logits_give_fp32_outputs_and_bf16_grads():
    torch.manual_seed(2)
    logits = torch.randn(2, 5, 13).bfloat16().requires_grad_(True)
    ids = torch.randint(0, 13, (2, 5))
    logp, ent = core.logprobs_and_entropy(logits, ids, chunk_size=3)
    assert logp.dtype == ent.dtype == torch.float32
    ref_logp, ref_ent = _ref_logp_entropy(logits.detach().float(), ids, 1.0)
    close(logp, ref_logp, tol=1e-5)  # upcast before the softmax: exact up to fp32 rounding
    close(ent, ref_ent, tol=1e-5)
    (logp.sum() + ent.sum()).backward()
    assert logits.grad.dtype == torch.bfloat16 and torch.isfinite(logits.grad.float()).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        core.token_entropy(torch.zeros(2, 3), temperature=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        core.token_entropy(torch.zeros(2, 3), chunk_size=0)
    with pytest.raises(ValueError, match="ids shape"):
        core.selective_log_softmax(torch.zeros(2, 3, 4), torch.zeros(2, 2, dtype=torch.long))


# --- masked statistics ----------------------------------------------------------------------------
def test_masked_mean_and_quantiles():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, NAN]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]])
    close(core.masked_mean(x, m), 2.5)  # (1 + 2 + 3 + 4) / 4
    # sorted valid [1, 2, 3, 4]: q 0.5 -> position 1.5 -> 2.5; q 0.8 -> position 2.4 -> 3.4
    assert core.masked_quantiles(x, m, (0.0, 0.5, 0.8, 1.0)) == pytest.approx([1.0, 2.5, 3.4, 4.0])
    empty = torch.zeros_like(m)
    assert all(math.isnan(v) for v in core.masked_quantiles(x, empty, (0.5, 0.9)))
    assert core.masked_mean(x, empty).item() == 0.0


# --- 80/20 mask -----------------------------------------------------------------------------------
def test_top_entropy_mask_keeps_exactly_the_top_two():
    # 10 valid tokens with entropies 0.1 .. 1.0 (shuffled over two rows), padding holds 9.0
    ent = torch.tensor([[0.3, 1.0, 0.1, 0.6, 0.8, 9.0], [0.5, 0.2, 0.9, 0.4, 0.7, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0]])
    keep = core.top_entropy_mask(ent, mask, 0.2)
    # 0.8 quantile of the 10 valid: position 0.8 * 9 = 7.2 -> 0.8 + 0.2 * 0.1 = 0.82 -> keeps 0.9 and 1.0
    assert keep.dtype == torch.bool
    assert keep.nonzero().tolist() == [[0, 1], [1, 2]]
    # q 0.5: position 4.5 -> 0.55 -> keeps 0.6 .. 1.0 = 5 tokens
    assert int(core.top_entropy_mask(ent, mask, 0.5).sum()) == 5
    assert torch.equal(core.top_entropy_mask(ent, mask, 1.0), mask.bool())
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="top_entropy_quantile"):
            core.top_entropy_mask(ent, mask, bad)


# --- entropy advantage ----------------------------------------------------------------------------
def test_entropy_advantage_both_branches():
    adv = torch.tensor([1.0, -1.0])
    ent = torch.tensor([[0.5, 3.0], [0.5, 3.0]], requires_grad=True)
    out = core.entropy_advantage(adv, ent, alpha=0.4, kappa=2.0)
    # |A| / kappa = 0.5. H=0.5: min(0.2, 0.5) = 0.2; H=3: min(1.2, 0.5) = 0.5
    close(out, [[1.2, 1.5], [-0.8, -0.5]])
    assert not out.requires_grad  # entropy enters detached


# --- Clip-Cov / KL-Cov ----------------------------------------------------------------------------
# 10 valid tokens in row 0, padding in row 1 holds wild values that must not enter the means.
# A    = [3, 3, 3, -3, -3, -3, 0, 0, 0, 0]   mean 0
# logp = [-1, -1, -1, -3, -3, -3, -2, -2, -2, -2]   mean -20 / 10 = -2
# cov  = A * (logp + 2) = [3, 3, 3, 3, 3, 3, 0, 0, 0, 0]
CC_ADV = torch.tensor([[3.0, 3, 3, -3, -3, -3, 0, 0, 0, 0], [100.0] * 10])
CC_LOGP = torch.tensor([[-1.0, -1, -1, -3, -3, -3, -2, -2, -2, -2], [50.0] * 10])
CC_MASK = torch.tensor([[1] * 10, [0] * 10])
CC_CLIPPED = torch.zeros(2, 10, dtype=torch.bool)
CC_CLIPPED[0, 0] = True  # already ratio-clipped: never a candidate
CANDIDATES = {(0, 1), (0, 2), (0, 3), (0, 4), (0, 5)}


def test_clip_cov_mask_picks_floor_ratio_n_candidates():
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        # ratio 0.2 * N 10 = 2 tokens, chosen among the 5 candidates with 1 < cov = 3 < 5
        out = core.clip_cov_mask(CC_ADV, CC_LOGP, CC_MASK, CC_CLIPPED, ratio=0.2, generator=g)
        picked = {tuple(i) for i in out.nonzero().tolist()}
        assert len(picked) == 2 and picked <= CANDIDATES
    a = core.clip_cov_mask(CC_ADV, CC_LOGP, CC_MASK, CC_CLIPPED, 0.2, generator=torch.Generator().manual_seed(7))
    b = core.clip_cov_mask(CC_ADV, CC_LOGP, CC_MASK, CC_CLIPPED, 0.2, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    # ratio 1.0 asks for 10 but only 5 candidates exist: all 5
    out = core.clip_cov_mask(CC_ADV, CC_LOGP, CC_MASK, CC_CLIPPED, ratio=1.0)
    assert {tuple(i) for i in out.nonzero().tolist()} == CANDIDATES
    # default ratio 0.0002: max(1, floor(0.002)) = 1
    assert int(core.clip_cov_mask(CC_ADV, CC_LOGP, CC_MASK, CC_CLIPPED).sum()) == 1
    # bounds exclude cov = 3: nothing
    assert not core.clip_cov_mask(CC_ADV, CC_LOGP, CC_MASK, CC_CLIPPED, 1.0, low=3.0).any()
    assert not core.clip_cov_mask(CC_ADV, CC_LOGP, CC_MASK, CC_CLIPPED, 1.0, high=3.0).any()


def test_kl_cov_mask_top_by_cov():
    # A    = [4, 2, 0, -1, -5, 0, 0, 0, 0, 0]   mean 0
    # logp = [-1, -2, -3, -4, -5, -3, -3, -3, -3, -3]   mean -30 / 10 = -3 -> centred [2, 1, 0, -1, -2, 0 ...]
    # cov  = [8, 2, 0, 1, 10, 0, 0, 0, 0, 0]
    adv = torch.tensor([[4.0, 2, 0, -1, -5, 0, 0, 0, 0, 0], [100.0] * 10])
    logp = torch.tensor([[-1.0, -2, -3, -4, -5, -3, -3, -3, -3, -3], [100.0] * 10])
    mask = torch.tensor([[1] * 10, [0] * 10])

    def picked(ratio):
        return sorted(i for _, i in core.kl_cov_mask(adv, logp, mask, ratio).nonzero().tolist())

    assert picked(0.0002) == [4]  # max(1, 0) = 1: the largest cov, 10
    assert picked(0.2) == [0, 4]  # 2 tokens: covs 10 and 8
    assert picked(0.3) == [0, 1, 4]  # 3 tokens: + cov 2
    assert not core.kl_cov_mask(adv, logp, torch.zeros_like(mask)).any()
