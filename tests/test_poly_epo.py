"""Poly-EPO and GRPO+DIV: the test vectors of the method notes (docs/methods.md), the unbiasedness factor, sampled sets, clusters, training."""

import itertools
import math
import warnings
from types import SimpleNamespace

import pytest
import torch

from workbench import ConfigError, RolloutBatch, RunConfig, Trainer
from workbench.methods import get
from workbench.methods.poly_epo import (
    _marginal,
    diversity_bonus,
    marginal_set_advantages,
    polychromic_objective,
    register_clusterer,
    set_indices,
    strategy_clusters,
)
from workbench.tasks import Problem

V1 = ([1.0, 0, 0, 0, 0, 0, 0, 0], [1, 2, 2, 2, 2, 3, 4, 5])
V3 = ([1.0, 1, 1, 1, 0, 0, 0, 0], [1, 1, 2, 2, 3, 3, 4, 4])
QUICK = dict(num_prompts=2, num_generations=4, max_completion_length=16, seed=5)


def baseline(rewards, clusters, n=4):
    return float(polychromic_objective(torch.tensor(rewards), torch.tensor(clusters), set_indices(len(rewards), n)).mean())


def test_vector_v1():
    rewards, clusters = V1
    assert baseline(rewards, clusters) == pytest.approx(0.101786, abs=1e-6)
    expected = torch.tensor([3.5625, -0.75, -0.75, -0.75, -0.75, -0.1875, -0.1875, -0.1875])
    assert torch.allclose(marginal_set_advantages(torch.tensor(rewards), clusters), expected, atol=1e-5)


def test_vector_v3_and_the_mean_reduction():
    rewards, clusters = V3
    assert baseline(rewards, clusters) == pytest.approx(0.392857, abs=1e-6)
    expected = torch.tensor([1.75] * 4 + [-1.75] * 4)
    assert torch.allclose(marginal_set_advantages(torch.tensor(rewards), clusters), expected, atol=1e-5)
    # each response is in C(7, 3) = 35 of the 70 sets
    mean = marginal_set_advantages(torch.tensor(rewards), clusters, reduce="mean")
    assert torch.allclose(mean, expected / 35, atol=1e-6)


def test_polychromic_objective_by_hand():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0])
    clusters = torch.tensor([7, 7, 100, 8])
    index = torch.tensor([[0, 1], [0, 3], [0, 2], [2, 3]])
    # {7,7}: one cluster -> d 0; {7,8}: d 2/2, mean 1; {7,100}: the degenerate one does not count -> 0;
    # {100, 8}: one counted cluster -> 0
    assert polychromic_objective(rewards, clusters, index).tolist() == [0.0, 1.0, 0.0, 0.0]


def test_unbiasedness_factor_by_exact_enumeration():
    """E[sum_i A_i grad log pi(y_i)] = M grad E[f], M = C(N, n) - C(N-1, n-1), on a 3-outcome policy."""
    N, n = 4, 2
    rewards = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    clusters = [1, 2, 100]
    theta = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64, requires_grad=True)
    logpi = torch.log_softmax(theta, -1)
    surrogate = torch.zeros((), dtype=torch.float64)
    for ys in itertools.product(range(3), repeat=N):
        ys = list(ys)
        prob = logpi[ys].sum().exp().detach()
        adv = marginal_set_advantages(rewards[ys], [clusters[y] for y in ys], set_size=n).double()
        surrogate = surrogate + prob * (adv * logpi[ys]).sum()
    (lhs,) = torch.autograd.grad(surrogate, theta, retain_graph=True)
    expected_f = torch.zeros((), dtype=torch.float64)
    for zs in itertools.product(range(3), repeat=n):
        zs = list(zs)
        f = polychromic_objective(rewards[zs], [clusters[z] for z in zs], torch.arange(n)[None])[0]
        expected_f = expected_f + logpi[zs].sum().exp() * f
    (rhs,) = torch.autograd.grad(expected_f, theta)
    M = math.comb(N, n) - math.comb(N - 1, n - 1)
    assert M == 3 and rhs.abs().max() > 1e-3
    assert torch.allclose(lhs, M * rhs, atol=1e-6)


def test_all_sets_sampled_equals_enumeration():
    rewards, clusters = V1
    full = marginal_set_advantages(torch.tensor(rewards), clusters)
    assert torch.equal(marginal_set_advantages(torch.tensor(rewards), clusters, num_sets=70, seed=3), full)
    assert torch.equal(marginal_set_advantages(torch.tensor(rewards), clusters, num_sets=500, seed=3), full)


def test_sampled_sets_are_distinct_seeded_and_leave_unsampled_responses_at_zero():
    index = set_indices(8, 4, num_sets=20, seed=1)
    assert index.shape == (20, 4) and len({tuple(r) for r in index.tolist()}) == 20
    assert torch.equal(index, set_indices(8, 4, num_sets=20, seed=1))
    assert not torch.equal(index, set_indices(8, 4, num_sets=20, seed=2))
    one = marginal_set_advantages(torch.tensor(V1[0]), V1[1], set_size=2, num_sets=1)
    assert (one == 0).sum() >= 6
    # too many sets to list (C(40, 20) ~ 1.4e11): random distinct subsets
    big = set_indices(40, 20, num_sets=5, seed=0)
    assert big.shape == (5, 20) and len({tuple(r) for r in big.tolist()}) == 5


def test_expected_sampled_sum_is_a_fixed_fraction_of_the_enumerated_one():
    """Over every choice of K of the C sets, the mean "sum" advantage is (K-1)/(C-1) x the full one."""
    rewards, clusters = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0], dtype=torch.float64), [1, 2, 2, 100, 3]
    all_sets = set_indices(5, 3)
    C, K = all_sets.shape[0], 4
    full = _marginal(rewards, clusters, all_sets, "sum", 100)[0].double()
    total = torch.zeros(5, dtype=torch.float64)
    choices = list(itertools.combinations(range(C), K))
    for chosen in choices:
        total += _marginal(rewards, clusters, all_sets[list(chosen)], "sum", 100)[0].double()
    assert torch.allclose(total / len(choices), (K - 1) / (C - 1) * full, atol=1e-6)


def test_random_sampled_sets_approach_enumeration_on_average():
    rewards, clusters = torch.tensor(V1[0]), V1[1]
    full_sum = marginal_set_advantages(rewards, clusters)
    full_mean = marginal_set_advantages(rewards, clusters, reduce="mean")
    seeds = range(300)
    avg_sum = torch.stack([marginal_set_advantages(rewards, clusters, num_sets=20, seed=s) for s in seeds]).mean(0)
    avg_mean = torch.stack([marginal_set_advantages(rewards, clusters, num_sets=20, seed=s, reduce="mean")
                            for s in seeds]).mean(0)
    assert torch.allclose(avg_sum * 69 / 19, full_sum, atol=0.15)
    assert torch.allclose(avg_mean, full_mean, atol=0.005)


def test_argument_errors():
    with pytest.raises(ValueError, match="set_size=9"):
        marginal_set_advantages(torch.zeros(8), [0] * 8, set_size=9)
    with pytest.raises(ValueError, match="reduce='max'"):
        marginal_set_advantages(torch.zeros(8), [0] * 8, reduce="max")
    with pytest.raises(ValueError, match="3 clusters for 8 rewards"):
        marginal_set_advantages(torch.zeros(8), [0] * 3)
    with pytest.raises(ValueError, match="num_sets=None would enumerate"):
        set_indices(40, 20)


def test_diversity_bonus_by_hand():
    # N = 4: cluster 1 has 2 members -> (4/2 - 1)/3 = 1/3; cluster 2 alone -> (4 - 1)/3 = 1; degenerate -> 0
    assert torch.allclose(diversity_bonus([1, 1, 2, 100]), torch.tensor([1 / 3, 1 / 3, 1.0, 0.0]))
    assert torch.equal(diversity_bonus([5, 5, 5]), torch.zeros(3))
    assert torch.equal(diversity_bonus([1, 2, 3]), torch.ones(3))


def scored_batch(rewards, strategies, answers=None, texts=None, groups=1):
    N, T = len(rewards), 3
    batch = RolloutBatch(
        problems=[Problem(id=str(g), prompt=f"p{g}") for g in range(groups)],
        group=torch.arange(groups).repeat_interleave(N // groups),
        prompt_ids=[[1]] * N, ids=torch.zeros(N, T, dtype=torch.long), mask=torch.ones(N, T),
        logprobs=torch.zeros(N, T), entropy=torch.zeros(N, T), topk_ids=torch.zeros(N, T, 5, dtype=torch.long),
        topk_probs=torch.zeros(N, T, 5), text=texts or [""] * N, mode=["normal"] * N, stage=[1] * N,
    )
    batch.rewards = torch.tensor(rewards, dtype=torch.float32)
    batch.strategies, batch.answers = strategies, answers
    return batch


def test_strategy_clusters_from_labels_answers_and_a_callable():
    batch = scored_batch([0] * 4, ["a", "b", None, "a"], answers=["3", "3", None, "4"], texts=["x", "yy", "zzz", "w"])
    rows = torch.arange(4)
    assert strategy_clusters(batch, rows) == [0, 1, 100, 0]
    assert strategy_clusters(batch, rows, "answer") == [0, 0, 100, 1]
    # ids skip the degenerate id, so a real cluster never lands in it
    assert strategy_clusters(batch, rows, degenerate_cluster=1) == [0, 2, 1, 0]
    seen = []

    def by_length(texts, problem):
        seen.append(problem.id)
        return [len(t) % 2 for t in texts]

    assert strategy_clusters(batch, rows, by_length) == [1, 0, 1, 1] and seen == ["0"]
    with pytest.raises(ValueError, match="2 cluster ids for 4 texts"):
        strategy_clusters(batch, rows, lambda texts, problem: [0, 1])
    with pytest.raises(ValueError, match="clusterer='judge'"):
        strategy_clusters(batch, rows, "judge")


def test_poly_epo_hook_gives_v1_to_every_token():
    rewards, _ = V1
    # strategies with the cluster structure of V1
    batch = scored_batch(rewards, ["a", "b", "b", "b", "b", "c", "d", "e"])
    method = get("poly_epo")(RunConfig(method="poly_epo", num_generations=8))
    numbers = method.advantages(SimpleNamespace(step_index=0), batch)
    expected = torch.tensor([3.5625, -0.75, -0.75, -0.75, -0.75, -0.1875, -0.1875, -0.1875])
    assert torch.allclose(batch.advantages, expected, atol=1e-5)
    assert torch.allclose(batch.token_advantages, expected[:, None].expand(8, 3), atol=1e-5)
    assert numbers["poly_set_objective_mean"] == pytest.approx(0.101786, abs=1e-6)
    assert numbers["poly_distinct_clusters"] == 5


def test_answer_clusters_reward_the_wrong_response_of_a_mostly_right_group_and_warn_once():
    # one right answer (5): 3 right responses and one wrong, clustered by answer, sets of 3. The
    # all-right set has one cluster, so d = 0 and f = 0; the 3 others f = 2/3 x 2/3; baseline 1/3
    method = get("poly_epo")(RunConfig(method="poly_epo", num_generations=4, method_options={"set_size": 3}))
    said = []
    for _ in range(2):  # said once a run
        batch = scored_batch([1.0, 1.0, 1.0, 0.0], ["5", "5", "5", "7"], answers=["5", "5", "5", "7"])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            method.advantages(SimpleNamespace(step_index=0), batch)
        assert batch.advantages.tolist() == pytest.approx([-1 / 9] * 3 + [1 / 3])
        said += [str(w.message) for w in caught]
    assert len(said) == 1 and said[0].startswith("poly_epo: the clusters are the parsed answers")
    assert "only wrong answers make a set diverse" in said[0]
    # strategies that differ from the answers (countdown's expressions): nothing said
    other = get("grpo_div")(RunConfig(method="grpo_div", num_generations=4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        other.advantages(SimpleNamespace(step_index=0), scored_batch([1.0, 0, 1, 0], ["a", "b", "c", "d"], ["5"] * 4))
    with pytest.warns(UserWarning, match="grpo_div: the clusters are the parsed answers"):
        get("grpo_div")(RunConfig(method="grpo_div", num_generations=4, method_options={"clusterer": "answer"})).advantages(
            SimpleNamespace(step_index=0), scored_batch([1.0, 0, 1, 0], ["a", "b", "c", "d"], ["5", "6", "5", "7"])
        )


def test_grpo_div_hook_by_hand():
    batch = scored_batch([1.0, 0.0, 1.0, 0.0], ["a", "a", "b", None])
    method = get("grpo_div")(RunConfig(method="grpo_div", num_generations=4))
    method.advantages(SimpleNamespace(step_index=0), batch)
    # d = [1/3, 1/3, 1, 0]; r + 0.5 d = [7/6, 1/6, 3/2, 0]; GRPO: (x - mean) / (unbiased std + 1e-4)
    shaped = torch.tensor([7 / 6, 1 / 6, 3 / 2, 0.0])
    mean, std = 17 / 24, math.sqrt(((shaped - 17 / 24) ** 2).sum().item() / 3)
    assert torch.allclose(batch.advantages, (shaped - mean) / (std + 1e-4), atol=1e-5)
    none = get("grpo_div")(RunConfig(method="grpo_div", num_generations=4, scale_rewards="none",
                                      method_options={"div_coef": 1.0}))
    none.advantages(SimpleNamespace(step_index=0), batch)
    shaped = torch.tensor([4 / 3, 1 / 3, 2.0, 0.0])
    assert torch.allclose(batch.advantages, shaped - shaped.mean(), atol=1e-6)


def test_config_errors_and_loss_settings():
    with pytest.raises(ConfigError, match=r"method_options.set_size=5 .*from 2 to num_generations - 1 = 3"):
        RunConfig(method="poly_epo", num_generations=4, method_options={"set_size": 5})
    # n = N: one set, its own baseline, zero advantages
    with pytest.raises(ConfigError, match=r"method_options.set_size=4 .*zero advantages"):
        RunConfig(method="poly_epo", num_generations=4)
    with pytest.raises(ConfigError, match="method_options.set_size=1"):
        RunConfig(method="poly_epo", method_options={"set_size": 1})
    with pytest.raises(ConfigError, match="method_options.reduce='max'"):
        RunConfig(method="poly_epo", method_options={"reduce": "max"})
    with pytest.raises(ConfigError, match="method_options.num_sets=0"):
        RunConfig(method="poly_epo", method_options={"num_sets": 0})
    with pytest.raises(ConfigError, match="method_options.num_sets=None.*too many"):
        RunConfig(method="poly_epo", num_generations=40, method_options={"set_size": 20})
    with pytest.raises(ConfigError, match="method_options.clusterer='judge'"):
        RunConfig(method="grpo_div", method_options={"clusterer": "judge"})
    with pytest.raises(ConfigError, match="method_options.div_coef=-1"):
        RunConfig(method="grpo_div", method_options={"div_coef": -1})
    cfg = RunConfig(method="poly_epo")
    assert get("poly_epo")(cfg).loss_settings()["epsilon_high"] == 0.28
    assert get("poly_epo")(RunConfig(method="poly_epo", epsilon_high=0.3)).loss_settings()["epsilon_high"] == 0.3
    # the paper's loss settings fill what the config leaves None, and the run records them
    assert cfg.epsilon_high == 0.28 and cfg.loss_type == "dr_grpo" and cfg.beta == 0 and cfg.entropy_coef == 0
    assert "loss_type: dr_grpo" in cfg.to_yaml() and "epsilon_high: 0.28" in cfg.to_yaml()
    assert cfg.num_iterations == 2 and "num_iterations: 2" in cfg.to_yaml()  # the paper's two steps a batch
    mine = RunConfig(method="poly_epo", loss_type="dapo", epsilon_high=0.2)  # set by the user: kept
    assert (mine.loss_type, mine.epsilon_high) == ("dapo", 0.2)
    grpo = cfg.replace(method="grpo")  # another method: its own settings, not Poly-EPO's
    assert (grpo.loss_type, grpo.epsilon_high, grpo.num_iterations) == ("dapo", None, 1)
    assert RunConfig(method="grpo").loss_type == "dapo" and RunConfig(method="grpo_div").loss_type == "dapo"


@pytest.mark.parametrize("method,options", [
    ("poly_epo", {"set_size": 2}),
    ("poly_epo", {"set_size": 3, "num_sets": 2, "reduce": "mean", "clusterer": "answer"}),
    ("grpo_div", {}),
])
def test_each_method_trains_five_steps(method, options):
    trainer = Trainer(RunConfig(**QUICK, method=method, method_options=options))
    trainer.run(5, progress=False)
    h = trainer.history
    assert len(h) == 5 and h["loss"].notna().all()
    assert {"poly_set_objective_mean", "poly_distinct_clusters"} <= set(h.columns)
    b = trainer.last_batch
    assert torch.allclose(b.token_advantages, b.advantages[:, None] * b.mask)


def test_the_second_update_of_a_batch_moves_the_ratio_so_the_clip_acts():
    """With one update a batch every ratio is 1 and the paper's clip 0.20 / 0.28 never acts; Poly-EPO
    takes two, and the second pass's ratios leave 1 (by the first pass's optimizer step)."""
    trainer = Trainer(RunConfig(**QUICK, method="poly_epo", method_options={"set_size": 2}, learning_rate=0.05))
    ratios: list[torch.Tensor] = []
    token_loss = trainer.method.token_loss

    def recording(logp, logp_old, advantages, mask, settings, generator=None):
        ratios.append(torch.exp(logp - logp_old).detach()[mask.bool()])
        return token_loss(logp, logp_old, advantages, mask, settings, generator)

    trainer.method.token_loss = recording
    for _ in range(3):
        ratios.clear()
        trainer.step()
        if trainer.last_batch.advantages.abs().max() > 0:  # a step with a learning signal
            break
    first, second = torch.cat(ratios[: len(ratios) // 2]), torch.cat(ratios[len(ratios) // 2 :])
    assert torch.allclose(first, torch.ones_like(first))  # the first pass: on-policy
    assert (second - 1).abs().max() > 0.05  # the second: the policy moved since the batch was sampled


def test_a_user_clusterer_is_called_per_group():
    problems = []

    def first_char(texts, problem):
        problems.append(problem.id)
        return [ord(t[0]) if t else None for t in texts]

    trainer = Trainer(RunConfig(**QUICK, method="poly_epo", method_options={"set_size": 2, "clusterer": first_char}))
    trainer.step()
    assert len(problems) == 2 and problems[0] != problems[1]


def test_a_registered_clusterer_is_named_in_the_config():
    register_clusterer("test_parity", lambda texts, problem: [len(t) % 2 for t in texts])
    cfg = RunConfig(**QUICK, method="grpo_div", method_options={"clusterer": "test_parity"})
    assert "clusterer: test_parity" in cfg.to_yaml()
    batch = scored_batch([0] * 3, [None] * 3, texts=["a", "bb", "c"])
    assert strategy_clusters(batch, torch.arange(3), "test_parity") == [1, 0, 1]
    assert math.isfinite(Trainer(cfg).step().metrics["loss"])
    with pytest.raises(ValueError, match="built in"):
        register_clusterer("answer", len)
