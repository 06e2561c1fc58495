"""Diversity metrics by hand, pass@k against brute force, and the pivot sensitivity probe."""

import itertools
import math

import numpy as np
import pytest
import torch

from workbench import RunConfig, Trainer
from workbench.engine.evaluation import pivot_sensitivity
from workbench.metrics import (
    distinct_n,
    pairwise_similarity,
    pass_at_k,
    self_bleu,
    strategy_count,
    unique_answers,
)
from workbench.tasks import Score


def test_distinct_n_by_hand():
    # whitespace tokens: a b c a b d -> 4 unique unigrams of 6; bigrams ab bc ab bd -> 3 of 4
    assert distinct_n(["a b c", "a b d"], 1) == pytest.approx(4 / 6)
    assert distinct_n(["a b c", "a b d"], 2) == pytest.approx(3 / 4)
    assert distinct_n(["a b c", "a b d"], 4) == 0.0
    # no spaces anywhere: characters. "aab", "ab": bigrams aa ab ab -> 2 of 3
    assert distinct_n(["aab", "ab"], 2) == pytest.approx(2 / 3)
    assert distinct_n([], 1) == 0.0
    with pytest.raises(ValueError, match="n=0"):
        distinct_n(["a"], 0)


def test_self_bleu_by_hand():
    assert self_bleu(["a b c d e", "a b c d e"]) == pytest.approx(1.0)
    assert self_bleu(["a b", "c d"]) == 0.0
    # "a b c" vs "a b d": p1 = 2/3; p2 smoothed (1 + 1)/(2 + 1) = 2/3; equal lengths -> BP 1
    assert self_bleu(["a b c", "a b d"], max_n=2) == pytest.approx(2 / 3)
    assert self_bleu(["abc", "abd"], max_n=2) == pytest.approx(2 / 3)  # characters, same numbers
    # brevity: "a b" vs "a b c": p1 = 1, BP = exp(1 - 3/2); "a b c" vs "a b": p1 = 2/3, BP = 1
    assert self_bleu(["a b", "a b c"], max_n=1) == pytest.approx((math.exp(-0.5) + 2 / 3) / 2)
    # clipped counts: "a a a a" against "a b" matches one "a" of four (longer: BP 1);
    # "a b" against "a a a a": p1 = 1/2, BP = exp(1 - 4/2)
    assert self_bleu(["a a a a", "a b"], max_n=1) == pytest.approx((1 / 4 + 1 / 2 * math.exp(-1)) / 2)
    assert self_bleu(["only one"]) == 0.0


def test_unique_answers_and_strategy_count():
    assert unique_answers(["1", "1", None, "2"]) == 2
    strategies = ["a", "b", None, "a"]
    assert strategy_count(strategies) == 2
    assert strategy_count(strategies, correct=[1.0, 0.0, 1.0, 1.0], correct_only=True) == 1
    assert strategy_count(strategies, correct=[True, True, False, False], correct_only=True) == 2
    with pytest.raises(ValueError, match="correct_only=True"):
        strategy_count(strategies, correct_only=True)


def test_pairwise_similarity_is_jaccard_of_character_trigrams():
    sim = pairwise_similarity(["abcd", "abce", "xy", "xy"])
    # {abc, bcd} vs {abc, bce}: 1 shared of 3; a text under 3 characters is its own only gram
    expected = np.array([[1, 1 / 3, 0, 0], [1 / 3, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]])
    assert isinstance(sim, np.ndarray) and np.allclose(sim, expected)
    assert pairwise_similarity([]).shape == (0, 0)


def test_pass_at_k_matches_brute_force_over_k_subsets():
    for n in range(1, 8):
        for c in range(n + 1):
            correct = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(range(n), k))
                hit = sum(any(correct[i] for i in s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(hit, abs=1e-12), (n, c, k)


class Recording:
    """A task that records what it scores and gives every completion the same reward."""

    name = "recording"

    def __init__(self, reward):
        self.reward, self.seen = reward, []

    def score(self, problem, completion):
        self.seen.append(completion)
        return Score(self.reward, None, None, True)


@pytest.fixture(scope="module")
def scored():
    trainer = Trainer(RunConfig(num_prompts=2, num_generations=4, max_completion_length=16, seed=1))
    return trainer, trainer.step().batch


def test_pivot_sensitivity_on_the_embedded_model(scored):
    trainer, batch = scored
    result = pivot_sensitivity(trainer, batch, 0, n=4, seed=1)
    assert set(result) == {"pivot_position", "pivot_entropy", "pivot_flip_rate", "low_position", "low_entropy",
                           "low_flip_rate", "n"}
    assert 0 <= result["pivot_flip_rate"] <= 1 and 0 <= result["low_flip_rate"] <= 1 and result["n"] == 4
    length = int(batch.mask[0].sum())
    assert 0 <= result["low_position"] < length and 0 <= result["pivot_position"] < length
    assert result["pivot_entropy"] == pytest.approx(float(batch.entropy[0, :length].max()))
    assert result["low_entropy"] <= result["pivot_entropy"]
    assert pivot_sensitivity(trainer, batch, 0, n=4, seed=1) == result
    chosen = pivot_sensitivity(trainer, batch, 1, position=0, n=2)
    assert chosen["pivot_position"] == 0


def test_pivot_sensitivity_counts_flips_of_the_full_completion(scored):
    trainer, batch = scored
    row = int(torch.nonzero(batch.rewards < 0.5)[0])
    task = Recording(reward=1.0)
    result = pivot_sensitivity(trainer.policy, batch, row, n=3, task=task, seed=0)
    # every resample succeeds where the original failed: all flips
    assert result["pivot_flip_rate"] == 1.0 and result["low_flip_rate"] == 1.0
    ids = batch.ids[row].tolist()
    for position, completions in ((result["pivot_position"], task.seen[:3]), (result["low_position"], task.seen[3:])):
        prefix = trainer.policy.tokenizer.decode(ids[:position])
        assert len(completions) == 3 and all(c.startswith(prefix) for c in completions)
    with pytest.raises(ValueError, match="needs task="):
        pivot_sensitivity(trainer.policy, batch, row)
    with pytest.raises(ValueError, match="response=99"):
        pivot_sensitivity(trainer, batch, 99)
