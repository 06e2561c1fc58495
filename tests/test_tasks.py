"""The built-in tasks: splits, reproducibility, strategy counts, demonstrations, hand-scored examples."""

from __future__ import annotations

import random
import re

import pytest

from workbench.tasks import Coins, Countdown, Problem, get, names
from workbench.tasks.coins import valid_payments
from workbench.tasks.countdown import solutions

N = 2000


def countdown_key(p: Problem):
    return tuple(sorted(p.meta["numbers"])), p.meta["target"]


def coins_key(p: Problem):
    return tuple(sorted(p.meta["coins"])), p.meta["amount"]


KEYS = {"countdown": countdown_key, "coins": coins_key}


def strategy_count(task, p: Problem) -> int:
    if isinstance(task, Countdown):
        return len(solutions(tuple(sorted(p.meta["numbers"]))).get(p.meta["target"], {}))
    max_coins = p.meta.get("max_coins", task.max_coins)
    return len(valid_payments(tuple(sorted(p.meta["coins"], reverse=True)), p.meta["amount"], max_coins))


@pytest.fixture(scope="module", params=["countdown", "coins"])
def generated(request):
    task = get(request.param)
    return task, {split: task.prompts(split, N, seed=0) for split in ("train", "test", "ood")}


def test_names_and_get():
    assert names() == ["coins", "countdown"]
    assert isinstance(get("countdown"), Countdown)
    assert isinstance(get("coins", max_coins=5), Coins)
    with pytest.raises(ValueError, match="allowed"):
        get("nope")


@pytest.mark.parametrize("name", ["countdown", "coins"])
def test_unknown_split_raises(name):
    with pytest.raises(ValueError, match="not a split"):
        get(name).prompts("valid", 3)


def test_splits_are_disjoint(generated):
    task, by_split = generated
    key = KEYS[task.name]
    assert all(len(v) == N for v in by_split.values())
    train = {key(p) for p in by_split["train"]}
    test = {key(p) for p in by_split["test"]}
    assert train and test
    assert not train & test


def test_prompts_are_reproducible(generated):
    task, by_split = generated
    for split in ("train", "test", "ood"):
        again = task.prompts(split, 50, seed=0)
        assert [(p.id, p.prompt, p.answer, p.meta) for p in again] == [
            (p.id, p.prompt, p.answer, p.meta) for p in by_split[split][:50]
        ]
        other = task.prompts(split, 50, seed=1)
        assert [p.prompt for p in other] != [p.prompt for p in again]


def test_every_test_problem_has_two_strategies(generated):
    task, by_split = generated
    for split in ("test", "train", "ood"):
        for p in by_split[split][:500] if split != "test" else by_split[split]:
            assert strategy_count(task, p) >= 2, p


def test_prompt_text_matches_meta(generated):
    task, by_split = generated
    for p in by_split["test"][:200]:
        if task.name == "countdown":
            assert p.prompt == f"Make {p.meta['target']} from {' '.join(map(str, p.meta['numbers']))}.\n"
            assert p.answer == str(p.meta["target"])
        else:
            m = re.fullmatch(r"Pay (\d+) with ([\d ]+)\.\n", p.prompt)
            assert m and int(m[1]) == p.meta["amount"]
            assert sorted(map(int, m[2].split())) == sorted(p.meta["coins"])


def test_demonstrations_with_solve_prob_1_always_score_1(generated):
    task, by_split = generated
    rng = random.Random(7)
    for split in ("train", "test", "ood"):
        for p in by_split[split][:300]:
            completion = task.demonstration(p, rng, solve_prob=1.0)
            score = task.score(p, completion)
            assert score.reward == 1.0 and score.parsed and score.strategy is not None, (p, completion)
            assert score.answer == p.answer


def test_demonstrations_cover_several_strategies(generated):
    task, by_split = generated
    rng = random.Random(3)
    p = max(by_split["test"][:50], key=lambda q: strategy_count(task, q))
    labels = {task.score(p, task.demonstration(p, rng, 1.0)).strategy for _ in range(200)}
    assert len(labels) >= 2


def test_near_miss_demonstrations_parse(generated):
    task, by_split = generated
    rng = random.Random(5)
    scores = [task.score(p, task.demonstration(p, rng, 0.0)) for p in by_split["train"][:300]]
    assert all(s.parsed for s in scores)
    assert sum(s.reward for s in scores) < len(scores)  # mostly misses


def test_ood_prompts(generated):
    task, by_split = generated
    for p in by_split["ood"]:
        if task.name == "countdown":
            assert len(p.meta["numbers"]) == 4
            assert len(re.fullmatch(r"Make \d+ from ([\d ]+)\.\n", p.prompt)[1].split()) == 4
        else:
            assert len(p.meta["coins"]) == 3
            assert task.ood_min_amount <= p.meta["amount"] <= task.ood_max_amount


# --- countdown by hand -------------------------------------------------------------------
CD = Countdown()
P22 = Problem("h/1", "Make 22 from 3 5 7.\n", "22", {"numbers": [3, 5, 7], "target": 22})
P10 = Problem("h/2", "Make 10 from 2 3 4.\n", "10", {"numbers": [2, 3, 4], "target": 10})


def test_countdown_correct_chain():
    s = CD.score(P22, "3*5=15,15+7=22")
    assert s.reward == 1.0 and s.parsed and s.answer == "22" and s.strategy is not None
    assert CD.score(P22, " 3*5=15, 15+7=22\nthat is all").reward == 1.0


def test_countdown_wrong_arithmetic_is_parsed_but_zero():
    s = CD.score(P22, "3+5=15,15+7=22")  # 3+5 is not 15
    assert s.reward == 0.0 and s.parsed
    s = CD.score(P22, "3*5=15,15+7=23")
    assert s.reward == 0.0 and s.parsed and s.answer == "23"


def test_countdown_number_not_given_is_unparsed():
    s = CD.score(P22, "3*4=12,12+7=19")
    assert not s.parsed and s.reward == 0.0 and s.strategy is None
    assert not CD.score(P22, "3*3=9,9+7=16").parsed  # 3 given once only


def test_countdown_not_all_numbers_used_is_zero():
    s = CD.score(P22, "3*5=15")
    assert s.reward == 0.0
    s = CD.score(Problem("h/3", "", "15", {"numbers": [3, 5, 7], "target": 15}), "3*5=15")
    assert s.reward == 0.0  # reaches the target but leaves 7 unused


def test_countdown_commutative_variants_share_a_strategy():
    a = CD.score(P22, "3*5=15,15+7=22")
    b = CD.score(P22, "5*3=15,7+15=22")
    assert a.reward == b.reward == 1.0 and a.strategy == b.strategy
    c = CD.score(P10, "2*3=6,6+4=10")
    d = CD.score(P10, "3*2=6,4+6=10")
    assert c.strategy == d.strategy


def test_countdown_different_structures_differ():
    a = CD.score(P10, "2*3=6,6+4=10")
    b = CD.score(P10, "3*4=12,12-2=10")
    assert a.reward == b.reward == 1.0
    assert a.strategy != b.strategy


@pytest.mark.parametrize("text", ["", "   ", "22", "hello", "3*5=15;15+7=22", "3 * 5 = 15, 15 + 7 = 22", "3/5=0,0+7=7"])
def test_countdown_garbage_is_unparsed(text):
    assert CD.score(P22, text).parsed is False


# --- coins by hand -----------------------------------------------------------------------
CO = Coins()
P12 = Problem("c/1", "Pay 12 with 2 5.\n", "12", {"coins": [5, 2], "amount": 12, "max_coins": 6})


def test_coins_correct_payments_and_strategies():
    a = CO.score(P12, "5+5=10,10+2=12")
    b = CO.score(P12, "2+5=7,7+5=12")
    c = CO.score(P12, "2+2=4,4+2=6,6+2=8,8+2=10,10+2=12")
    assert a.reward == b.reward == c.reward == 1.0
    assert a.parsed and a.answer == "12"
    assert a.strategy == b.strategy != c.strategy


def test_coins_wrong_arithmetic_is_parsed_but_zero():
    s = CO.score(P12, "5+5=10,10+2=13")
    assert s.parsed and s.reward == 0.0 and s.answer == "13"
    s = CO.score(P12, "5+5=11,11+2=12")  # reaches 12 through a wrong sum
    assert s.parsed and s.reward == 0.0
    s = CO.score(P12, "5+5=10,10+5=15")  # true sums, wrong amount
    assert s.parsed and s.reward == 0.0


def test_coins_coin_not_given_is_unparsed():
    for text in ("5+4=9,9+3=12", "4+5=9,9+3=12", "5+5=10,11+2=13"):
        s = CO.score(P12, text)
        assert not s.parsed and s.reward == 0.0 and s.strategy is None


@pytest.mark.parametrize("text", ["", "12", "5+5+2=12", "5 + 5 = 10, 10 + 2 = 12", "+5=5,5+5=10", "five=5"])
def test_coins_garbage_is_unparsed(text):
    assert CO.score(P12, text).parsed is False
