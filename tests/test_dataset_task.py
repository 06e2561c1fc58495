"""DatasetTask over local files (no Hub access) and TRL-style reward functions."""

from __future__ import annotations

import json
import math
import random
import sys
import types

import pandas as pd
import pytest

from workbench.tasks import (
    Coins,
    Countdown,
    DatasetError,
    DatasetTask,
    Problem,
    RewardFunctionError,
    RewardFunctionTask,
    Score,
    Task,
    score_batch,
)

ROWS = [
    {"prompt": f"What is {i} times 1000?", "answer": str(i * 1000), "difficulty": i % 3, "topic": "mult"}
    for i in range(1, 20)
] + [{"prompt": "How many apples? Show work.", "answer": "She has 1000 + 234 apples.\n#### 1,234", "difficulty": 2, "topic": "gsm"}]
GSM_PROMPT = "How many apples? Show work."


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "math.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


@pytest.fixture
def parquet(tmp_path):
    path = tmp_path / "math.parquet"
    pd.DataFrame(ROWS).to_parquet(path)
    return path


@pytest.fixture
def capitals(tmp_path):
    path = tmp_path / "capitals.csv"
    pd.DataFrame(
        {
            "question": ["Capital of France?", "Capital of Peru?", "Bond's code?", "Capital of Japan?"],
            "reply": ["Paris", "Lima", "007", "Tokyo"],
        }
    ).to_csv(path, index=False)
    return path


def all_rows(task):
    return task.rows("train") + task.rows("test")


def find(task, prompt):
    return next(p for p in all_rows(task) if p.prompt == prompt)


# --- loading and splits --------------------------------------------------------------------
def test_from_jsonl_reads_rows_and_reduces_gsm8k_answers(jsonl):
    task = DatasetTask.from_file(jsonl)
    assert isinstance(task, Task) and task.name == "math"
    rows = all_rows(task)
    assert len(rows) == len(ROWS)
    gsm = find(task, GSM_PROMPT)
    assert gsm.answer == "1234"
    assert gsm.meta == {"difficulty": 2, "topic": "gsm"}


def test_parquet_and_json_match_jsonl(jsonl, parquet, tmp_path):
    as_json = tmp_path / "math.json"
    as_json.write_text(json.dumps(ROWS))
    tasks = [DatasetTask.from_file(p) for p in (jsonl, parquet, as_json)]
    views = [sorted((p.prompt, p.answer, tuple(sorted(p.meta.items()))) for p in all_rows(t)) for t in tasks]
    assert views[0] == views[1] == views[2]
    assert [p.prompt for p in tasks[0].rows("test")] == [p.prompt for p in tasks[1].rows("test")]


def test_split_is_disjoint_deterministic_and_sized(jsonl):
    a, b = DatasetTask.from_file(jsonl), DatasetTask.from_file(jsonl)
    train, test = {p.prompt for p in a.rows("train")}, {p.prompt for p in a.rows("test")}
    assert not train & test and len(train) + len(test) == len(ROWS)
    assert len(test) == 2  # 10% of 20
    assert test == {p.prompt for p in b.rows("test")}
    other = [{p.prompt for p in DatasetTask.from_file(jsonl, seed=s).rows("test")} for s in range(1, 6)]
    assert any(t != test for t in other)
    half = DatasetTask.from_file(jsonl, test_fraction=0.5)
    assert len(half.rows("test")) == 10


def test_split_ignores_row_order_and_keeps_duplicates_together():
    rows = ROWS + [dict(ROWS[0]), dict(ROWS[0])]
    a = DatasetTask(rows, test_fraction=0.3)
    b = DatasetTask(list(reversed(rows)), test_fraction=0.3)
    assert {p.prompt for p in a.rows("test")} == {p.prompt for p in b.rows("test")}
    in_test = [p for p in a.rows("test") if p.prompt == ROWS[0]["prompt"]]
    in_train = [p for p in a.rows("train") if p.prompt == ROWS[0]["prompt"]]
    assert (len(in_test), len(in_train)) in ((3, 0), (0, 3))


def test_prompts_sample_reproducibly_and_with_replacement(jsonl):
    task = DatasetTask.from_file(jsonl)
    few = task.prompts("train", 5, seed=1)
    assert len(few) == 5 and len({p.prompt for p in few}) == 5
    assert [p.prompt for p in few] == [p.prompt for p in task.prompts("train", 5, seed=1)]
    assert [p.prompt for p in few] != [p.prompt for p in task.prompts("train", 5, seed=2)]
    many = task.prompts("train", 50, seed=0)
    assert len(many) == 50
    assert {p.prompt for p in many} == {p.prompt for p in task.rows("train")}
    assert all(p.id.startswith("math/train/") for p in many)
    assert task.prompts("test", 0) == []
    with pytest.raises(ValueError):
        task.prompts("train", -1)


def test_ood_needs_rows(jsonl, tmp_path):
    task = DatasetTask.from_file(jsonl)
    with pytest.raises(ValueError, match="ood"):
        task.prompts("ood", 3)
    with pytest.raises(ValueError, match="not a split"):
        task.prompts("validation", 3)
    ood = tmp_path / "ood.jsonl"
    ood.write_text(json.dumps({"prompt": "What is 12345 times 2?", "answer": "24690"}) + "\n")
    with_path = DatasetTask.from_file(jsonl, ood_path=ood)
    assert [p.answer for p in with_path.prompts("ood", 2)] == ["24690", "24690"]
    with_rows = DatasetTask.from_file(jsonl, ood_rows=[{"prompt": "q", "answer": "#### 7"}])
    assert with_rows.prompts("ood", 1)[0].answer == "7"


def test_missing_column_lists_available_columns(jsonl):
    with pytest.raises(ValueError) as info:
        DatasetTask.from_file(jsonl, prompt_column="question")
    message = str(info.value)
    assert "'question'" in message
    for column in ("prompt", "answer", "difficulty", "topic"):
        assert repr(column) in message
    with pytest.raises(ValueError, match="'solution'"):
        DatasetTask.from_file(jsonl, answer_column="solution")


def test_bad_inputs(jsonl, tmp_path):
    with pytest.raises(ValueError, match="match"):
        DatasetTask.from_file(jsonl, match="fuzzy")
    with pytest.raises(ValueError, match="test_fraction"):
        DatasetTask.from_file(jsonl, test_fraction=1.0)
    with pytest.raises(DatasetError, match="nope.jsonl: no such data file"):
        DatasetTask.from_file(tmp_path / "nope.jsonl")
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(ValueError, match="unsupported"):
        DatasetTask.from_file(tmp_path / "data.txt")
    with pytest.raises(ValueError, match="not a number"):
        DatasetTask([{"prompt": "q", "answer": "Paris"}])  # numeric match needs numeric answers
    with pytest.warns(UserWarning, match="skipped 1"):
        task = DatasetTask([{"prompt": "q", "answer": "1"}, {"prompt": "r", "answer": None}], test_fraction=0)
    assert len(task.rows("train")) == 1
    with pytest.raises(ValueError, match="no test rows"):
        task.prompts("test", 1)


# --- scoring ---------------------------------------------------------------------------------
def test_numeric_scoring(jsonl):
    task = DatasetTask.from_file(jsonl)
    gsm = find(task, GSM_PROMPT)
    cases = {
        "Adding up: 1000 + 234.\n#### 1,234": (1.0, "1234"),
        "#### 1234.0": (1.0, "1234"),
        "So the answer: +1,234 apples. Check: 1 + 1 = 2": (1.0, "1234"),
        "Answer: 1234.0000001": (1.0, "1234.0000001"),
        "I think it is 1,233 or maybe 1234": (1.0, "1234"),
        "First 12, then 1234.": (1.0, "1234"),
        "The result is \\boxed{1,234}.": (1.0, "1234"),
        "1234.01": (0.0, "1234.01"),
        "#### 1233\nwait, 1234": (0.0, "1233"),
        "It is -1234": (0.0, "-1234"),
    }
    for completion, (reward, answer) in cases.items():
        score = task.score(gsm, completion)
        assert (score.reward, score.answer, score.parsed) == (reward, answer, True), completion
        assert score.strategy == answer  # answer-based strategy labels
    for completion in ("no idea", "", "####", "#### many", "Answer: unknown"):
        assert task.score(gsm, completion) == Score(0.0, None, None, False), completion
    neg = DatasetTask([{"prompt": "q", "answer": "-3.50"}], test_fraction=0).rows("train")[0]
    assert task.score(neg, "10-5 is 5, so -3.5").reward == 1.0
    assert task.score(neg, "10-3.5").reward == 0.0  # "10-3.5" is 10 minus 3.5


def test_exact_scoring_keeps_csv_answers_as_text(capitals):
    task = DatasetTask.from_file(capitals, prompt_column="question", answer_column="reply", match="exact", test_fraction=0)
    bond = find(task, "Bond's code?")
    assert bond.answer == "007"
    assert task.score(bond, "007").reward == 1.0
    assert task.score(bond, "7").reward == 0.0
    paris = find(task, "Capital of France?")
    assert task.score(paris, "  Paris \n").reward == 1.0
    assert task.score(paris, "Let me think.\nAnswer: Paris\nBecause it is.").reward == 1.0
    assert task.score(paris, "#### Paris") == Score(1.0, "Paris", "Paris", True)
    wrong = task.score(paris, "paris")
    assert wrong == Score(0.0, "paris", "paris", True)  # case-sensitive
    assert task.score(paris, "Paris is the capital").reward == 0.0
    assert not task.score(paris, "   ").parsed
    assert not task.score(paris, "Answer:   ").parsed


# --- the Hub, without the network ---------------------------------------------------------------
def fake_datasets(monkeypatch, load):
    module = types.ModuleType("datasets")
    module.load_dataset = load
    monkeypatch.setitem(sys.modules, "datasets", module)


class FakeDataset:
    def __init__(self, rows):
        self.rows = rows

    def to_pandas(self):
        return pd.DataFrame(self.rows)


def test_from_hub_uses_load_dataset(monkeypatch):
    calls = []

    def load(name, config=None, split=None):
        calls.append((name, config, split))
        return FakeDataset([{"question": r["prompt"], "answer": r["answer"]} for r in ROWS])

    fake_datasets(monkeypatch, load)
    task = DatasetTask.from_hub("openai/gsm8k", config="main", prompt_column="question")
    assert calls == [("openai/gsm8k", "main", "train")]
    assert task.name == "gsm8k"
    assert find(task, GSM_PROMPT).answer == "1234"


def test_from_hub_unreachable_names_dataset_and_suggests_a_file(monkeypatch):
    def load(name, config=None, split=None):
        raise ConnectionError("Couldn't reach the Hub")

    fake_datasets(monkeypatch, load)
    with pytest.raises(RuntimeError) as info:
        DatasetTask.from_hub("someone/private-set")
    assert "someone/private-set" in str(info.value)
    assert "from_file" in str(info.value)


# --- TRL-style reward functions ----------------------------------------------------------------
@pytest.fixture
def task(jsonl):
    return DatasetTask.from_file(jsonl)


def test_reward_function_receives_columns(task):
    calls = []

    def by_difficulty(prompts, completions, difficulty, topic, answer, **kwargs):
        calls.append(dict(prompts=prompts, completions=completions, difficulty=difficulty, topic=topic, answer=answer, **kwargs))
        return [float(d) for d in difficulty]

    problems = task.prompts("train", 6, seed=0)
    completions = [f"#### {p.answer}" if i % 2 == 0 else "no idea" for i, p in enumerate(problems)]
    wrapped = RewardFunctionTask(task, by_difficulty)
    scores = wrapped.score_batch(problems, completions)
    assert len(calls) == 1  # once per batch
    call = calls[0]
    assert call["prompts"] == [p.prompt for p in problems]
    assert call["completions"] == completions
    assert call["difficulty"] == [p.meta["difficulty"] for p in problems]
    assert call["answer"] == [p.answer for p in problems]
    assert set(call) == {"prompts", "completions", "difficulty", "topic", "answer"}
    base = [task.score(p, c) for p, c in zip(problems, completions)]
    assert [s.reward for s in scores] == [float(p.meta["difficulty"]) for p in problems]
    assert [(s.answer, s.strategy, s.parsed) for s in scores] == [(s.answer, s.strategy, s.parsed) for s in base]
    assert wrapped.score(problems[0], completions[0]).reward == float(problems[0].meta["difficulty"])
    assert wrapped.name == task.name and len(wrapped.prompts("test", 3)) == 3


def test_weighted_sum_and_keyword_only_functions(task):
    def correct(completions, answer, **kwargs):  # TRL functions often take only what they need
        return [1.0 if c.endswith(a) else 0.0 for c, a in zip(completions, answer)]

    def short(completions, **kwargs):
        return [1.0 if len(c) < 10 else 0.0 for c in completions]

    problems = task.prompts("train", 2, seed=3)
    completions = [f"#### {problems[0].answer}", "wrong " * 5]
    wrapped = RewardFunctionTask(task, [correct, short], reward_weights=[2.0, 0.5])
    assert [s.reward for s in wrapped.score_batch(problems, completions)] == [2.5, 0.0]
    with pytest.raises(ValueError, match="weights"):
        RewardFunctionTask(task, [correct, short], reward_weights=[1.0])
    with pytest.raises(ValueError):
        RewardFunctionTask(task, [])


def test_score_batch_falls_back_to_score():
    cd = Countdown()
    problems = cd.prompts("train", 4)
    completions = [cd.demonstration(p, random.Random(0), 1.0) for p in problems]
    assert score_batch(cd, problems, completions) == [cd.score(p, c) for p, c in zip(problems, completions)]
    wrapped = RewardFunctionTask(Coins(), lambda prompts, completions, **kw: [0.25] * len(completions))
    coin_problems = Coins().prompts("train", 3)
    assert [s.reward for s in score_batch(wrapped, coin_problems, ["x"] * 3)] == [0.25] * 3
    with pytest.raises(ValueError, match="completions"):
        score_batch(cd, problems, completions[:2])


def _batch(task):
    problems = task.prompts("train", 3, seed=0)
    return problems, ["fine", "boom " + "x" * 500, "fine too"]


def test_raising_function_names_function_prompt_and_completion(task):
    def explodes(prompts, completions, **kwargs):
        for c in completions:
            if c.startswith("boom"):
                raise KeyError("kaboom")
        return [1.0] * len(completions)

    problems, completions = _batch(task)
    with pytest.raises(RewardFunctionError) as info:
        RewardFunctionTask(task, explodes).score_batch(problems, completions)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "explodes" in message and "kaboom" in message
    assert problems[1].prompt in message  # the offending one, not the first of the batch
    assert ("boom " + "x" * 195) in message and "x" * 300 not in message  # truncated to 200


@pytest.mark.parametrize(
    "returned, what",
    [
        (lambda n: [1.0] * (n - 1), "values for 3"),
        (lambda n: [1.0, math.nan, 1.0], "nan"),
        (lambda n: [1.0, None, 1.0], "None"),
        (lambda n: 1.0, "not a list"),
        (lambda n: [1.0, "1", 1.0], "not a number"),
    ],
)
def test_bad_return_values_raise(task, returned, what):
    def reward_fn(prompts, completions, **kwargs):
        return returned(len(completions))

    problems, completions = _batch(task)
    with pytest.raises(RewardFunctionError, match=what) as info:
        RewardFunctionTask(task, reward_fn).score_batch(problems, completions)
    assert "reward_fn" in str(info.value)
    if what in ("nan", "None", "not a number"):
        assert problems[1].prompt in str(info.value)


def test_zero_mode_scores_failures_zero_and_counts_them(task):
    def flaky(prompts, completions, **kwargs):
        if any(c.startswith("boom") for c in completions):
            raise RuntimeError("flaky")
        return [1.0] * len(completions)

    def partly_nan(prompts, completions, **kwargs):
        return [math.nan if c == "fine too" else 0.5 for c in completions]

    problems, completions = _batch(task)
    wrapped = RewardFunctionTask(task, [flaky, partly_nan], reward_errors="zero")
    scores = wrapped.score_batch(problems, completions)
    assert [s.reward for s in scores] == [1.5, 0.0, 0.0]
    assert wrapped.error_count == 2
    wrapped.score_batch(problems, completions)
    assert wrapped.error_count == 4
    wrong_length = RewardFunctionTask(task, lambda prompts, completions, **kw: [1.0], reward_errors="zero")
    assert [s.reward for s in wrong_length.score_batch(problems, completions)] == [1.0, 1.0, 1.0]  # per item it works
    with pytest.raises(ValueError, match="reward_errors"):
        RewardFunctionTask(task, flaky, reward_errors="ignore")


def test_meta_named_like_arguments_does_not_collide():
    problems = [Problem("x/0", "p", "1", {"prompts": "oops", "completions": "oops", "answer": "mine"})]
    seen = {}

    def fn(prompts, completions, **kwargs):
        seen.update(kwargs, prompts=prompts)
        return [1.0]

    base = DatasetTask([{"prompt": "p", "answer": "1"}], test_fraction=0)
    assert RewardFunctionTask(base, fn).score_batch(problems, ["1"])[0].reward == 1.0
    assert seen == {"prompts": ["p"], "answer": ["mine"]}  # a data column named answer wins, as in TRL
