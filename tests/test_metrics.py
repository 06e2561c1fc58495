"""pass@k, pivots and diversity on hand-computed examples."""

import math

import pytest
import torch

from workbench.metrics import find_pivots, group_diversity, mean_pass_at_k, pass_at_k, pivot_stats


def test_pass_at_k_matches_the_combinatorial_formula():
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(4, 3, 2) == 1.0  # n - c < k
    assert pass_at_k(16, 4, 1) == pytest.approx(0.25)
    for n, c, k in [(64, 5, 32), (20, 7, 3)]:
        assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))
    assert mean_pass_at_k([0, 4], 4, (1, 4)) == {1: 0.5, 4: 0.5}
    with pytest.raises(ValueError, match="k=5"):
        pass_at_k(4, 1, 5)


def test_pivots_are_group_zscored_entropy_spikes():
    # one group; valid entropies 0,0,0,0,2 -> mean 0.4, std 0.8, z(2) = 2.0, z(0) = -0.5
    entropy = torch.tensor([[0.0, 0.0, 2.0, 9.0], [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    flags = find_pivots(entropy, mask, z_threshold=1.0)
    assert flags.tolist() == [[False, False, True, False], [False, False, False, False]]
    assert not find_pivots(entropy, mask, z_threshold=2.5).any()
    stats = pivot_stats(entropy, mask, flags)
    assert stats["pivots_per_response"] == 0.5 and stats["entropy_at_pivots"] == 2.0 and stats["entropy_elsewhere"] == 0.0


def test_pivots_are_scored_within_each_group():
    entropy = torch.tensor([[0.0, 1.0], [0.0, 1.0], [5.0, 5.0], [5.0, 6.0]])
    mask = torch.ones(4, 2)
    flags = find_pivots(entropy, mask, z_threshold=1.0, group=torch.tensor([0, 0, 1, 1]))
    # group 1: values 5,5,5,6 -> mean 5.25, std 0.433, z(6) = 1.73
    assert flags.tolist() == [[False, False], [False, False], [False, False], [False, True]]


def test_group_diversity_counts_distinct_labels():
    groups = [[0, 1, 2], [3, 4, 5]]
    answers = ["1", "1", None, "3", "4", "5"]
    strategies = ["a", "b", None, "c", "c", "d"]
    rewards = [1, 1, 0, 1, 0, 0]
    d = group_diversity(groups, answers, strategies, rewards)
    assert d == {"unique_answers": 2.0, "distinct_strategies": 2.0, "distinct_correct_strategies": 1.5}
