"""ReasoningGymTask: reasoning-gym datasets as tasks (splits, ood, the package's scorer behind a
never-raising verifier, names in tasks.get and RunConfig, a trainer step)."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from unittest.mock import ANY

import pytest

pytest.importorskip("reasoning_gym")

from workbench import ConfigError, RunConfig, Trainer, tasks  # noqa: E402
from workbench.tasks import Problem, ReasoningGymTask, Score, Task  # noqa: E402
from workbench.tasks import reasoning_gym as rg  # noqa: E402

SMALL_SUM = "reasoning_gym:chain_sum?max_digits=1&max_terms=2"  # about 200 distinct questions


def test_a_reasoning_gym_task_is_a_task():
    task = tasks.get("reasoning_gym:leg_counting")
    assert isinstance(task, Task) and isinstance(task, ReasoningGymTask)
    assert task.name == "reasoning_gym:leg_counting"
    problem = task.prompts("train", 1)[0]
    assert problem.answer == problem.meta["entry"]["answer"]
    assert problem.prompt.startswith(problem.meta["entry"]["question"].rstrip())
    assert problem.prompt.endswith(rg.ANSWER_FORMATS["line"])


@pytest.mark.parametrize("spec", [SMALL_SUM, "reasoning_gym:basic_arithmetic?max_terms=2&max_digits=1",
                                  "reasoning_gym:leg_counting?min_animals=1&max_animals=2&max_instances=2"])
def test_no_test_or_ood_prompt_appears_in_train(spec):
    task = tasks.get(spec)
    train = {p.prompt for seed in range(10) for p in task.prompts("train", 40, seed=seed)}
    held_out = {p.prompt for seed in range(10) for p in task.prompts("test", 30, seed=seed)}
    held_out |= {p.prompt for seed in range(3) for p in task.prompts("ood", 30, seed=seed)}
    assert len(train) > 50 and len(held_out) > 50
    assert not train & held_out


def test_each_split_draws_from_its_own_seed_range():
    task = tasks.get(SMALL_SUM)
    for index, split in enumerate(("train", "test", "ood")):
        seeds = {task.dataset_seed(split, s) for s in range(500)}
        assert len(seeds) == 500
        # item i of a dataset uses seed + i; a split's draws never reach the next split's range
        assert all(index * 2**30 <= s and s + 2**28 < (index + 1) * 2**30 for s in seeds)


def test_prompts_are_reproducible_from_the_seed():
    task = tasks.get("reasoning_gym:leg_counting")
    for split in ("train", "test", "ood"):
        first = [(p.prompt, p.answer) for p in task.prompts(split, 12, seed=3)]
        assert first == [(p.prompt, p.answer) for p in tasks.get("reasoning_gym:leg_counting").prompts(split, 12, seed=3)]
        assert first != [(p.prompt, p.answer) for p in task.prompts(split, 12, seed=4)]
    assert task.prompts("test", 0) == []


@pytest.mark.parametrize("name", sorted(rg.OOD_HARDER))
def test_ood_config_starts_above_the_train_range(name):
    task = ReasoningGymTask(name)
    ood = task.split_config("ood")
    defaults = task._config_cls()
    for low, high, _ in rg.OOD_HARDER[name]:
        assert ood[low] > getattr(defaults, high) and ood[high] >= ood[low]
    problems = task.prompts("ood", 2, seed=0)  # the harder config is a valid one
    assert len(problems) == 2 and all(p.meta["split"] == "ood" for p in problems)


def test_ood_problems_are_harder():
    task = tasks.get(SMALL_SUM)
    assert task.split_config("ood") == {"max_digits": 1, "min_terms": 3, "max_terms": 4}
    train_terms = {p.meta["entry"]["metadata"]["num_terms"] for p in task.prompts("train", 100)}
    ood_terms = {p.meta["entry"]["metadata"]["num_terms"] for p in task.prompts("ood", 100)}
    assert max(train_terms) == 2 and min(ood_terms) == 3
    legs = tasks.get("reasoning_gym:leg_counting?min_animals=1&max_animals=3")
    train_animals = max(p.meta["entry"]["metadata"]["num_animals"] for p in legs.prompts("train", 50))
    assert min(p.meta["entry"]["metadata"]["num_animals"] for p in legs.prompts("ood", 50)) > train_animals


def test_ood_without_a_setting_fails_only_when_asked():
    task = ReasoningGymTask("count_bits", max_n=1000)
    assert len(task.prompts("train", 3)) == len(task.prompts("test", 3)) == 3
    with pytest.raises(ValueError, match="no ood setting; pass ood_config="):
        task.prompts("ood", 3)
    given = ReasoningGymTask("count_bits", max_n=1000, ood_config={"min_n": 10**6, "max_n": 10**9})
    assert all(p.meta["entry"]["metadata"]["n"] >= 10**6 for p in given.prompts("ood", 10))
    by_name = tasks.get("reasoning_gym:count_bits?max_n=1000&ood.min_n=1000000&ood.max_n=1000000000")
    assert by_name.split_config("ood") == given.split_config("ood")
    with pytest.raises(ValueError, match="count_bits ood config .* not valid"):
        ReasoningGymTask("count_bits", ood_config={"min_n": 5, "max_n": 1}).prompts("ood", 1)


@pytest.mark.parametrize("spec", [SMALL_SUM, "reasoning_gym:basic_arithmetic", "reasoning_gym:leg_counting",
                                  "reasoning_gym:gcd", "reasoning_gym:coin_flip", "reasoning_gym:spell_backward",
                                  "reasoning_gym:letter_jumble"])
def test_the_reference_answer_scores_one_and_a_wrong_one_zero(spec):
    for answer_format in ("line", "tags"):
        task = tasks.get(spec, answer_format=answer_format)
        for problem in task.prompts("test", 5, seed=1) + task.prompts("train", 5, seed=1):
            ref = problem.answer
            for completion in (f"Let me think.\nAnswer: {ref}", f"<answer>{ref}</answer>", f"<answer>\n{ref}\n</answer>",
                               f"Answer: 12345\n<answer>{ref}</answer>"):
                score = task.score(problem, completion)
                assert score == Score(1.0, score.answer, score.answer, True), (completion, score)
            wrong = task.score(problem, f"Answer: 9{ref} wrong")  # coin_flip credits a matching prefix
            assert wrong.reward == 0.0 and wrong.parsed
            assert task.score(problem, "") == rg.UNPARSED


def test_numeric_answers_are_found_where_a_small_model_puts_them():
    task = tasks.get(SMALL_SUM)
    problem = Problem("p", "?", "-4", {"entry": {"question": "4 - 8 =", "answer": "-4", "metadata": {}}, "split": "test"})
    for completion in ("-4", "4 - 8 = -4", "The answer is -4.", "Answer: 4 - 8 = -4", "answer:-4.0",
                       "Answer:\n\n-4\nMore text 17", "<answer>-4</answer> then 99", "<answer> -4",
                       "Answer: 5\nAnswer: -4"):
        assert task.score(problem, completion).reward == 1.0, completion
    for completion in ("Answer: 4", "4 - 8 = 4", "-4 is wrong, it is 3", "Answer: none", "Answer: -4/2"):
        assert task.score(problem, completion).reward == 0.0, completion
    assert task.score(problem, "Answer: -4").strategy == "-4"  # answer clusters
    big = Problem("q", "?", "1234", {"entry": {"question": "x", "answer": "1234", "metadata": {}}, "split": "test"})
    assert task.score(big, "Answer: 1,234").reward == task.score(big, "Answer: +1234").reward == 1.0
    coins = tasks.get("reasoning_gym:coin_flip")
    half = Problem("h", "?", "0.5", {"entry": {"question": "x", "answer": "0.5", "metadata": {}}, "split": "test"})
    for completion in ("Answer: 16/32", "It is 1 / 2", "<answer>0.50</answer>", "16/32"):
        assert coins.score(half, completion) == Score(1.0, coins.score(half, completion).answer, ANY, True), completion
    assert coins.score(half, "Answer: 1/3").reward == 0.0


def test_substring_credit_is_off_unless_asked():
    entry = {"question": "x", "answer": "4", "metadata": {}}
    problem = Problem("p", "?", "4", {"entry": entry, "split": "test"})
    assert ReasoningGymTask("basic_arithmetic").score(problem, "Answer: 14").reward == 0.0
    assert ReasoningGymTask("basic_arithmetic", partial_credit=True).score(problem, "Answer: 14").reward == 0.5


def _garbage(rng: random.Random) -> str:
    pieces = ["Answer:", "answer :", "<answer>", "</answer>", "=", "-", "+", ",", ".", "\n", " ", "e", "1e999",
              "9" * rng.randint(1, 5000), "٣", "𝟕", "\u200b", "\x00", "ﬀ", "∞", "NaN", "-0", "0.0000", "{", "}",
              "[", "]", "'", '"', "\\boxed{", "🙂", "Ω", "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace")]
    return "".join(rng.choice(pieces) if rng.random() < 0.7 else chr(rng.randint(0, 0x2FFFF)) for _ in range(rng.randint(0, 40)))


@pytest.mark.parametrize("spec", [SMALL_SUM, "reasoning_gym:leg_counting", "reasoning_gym:number_sorting",
                                  "reasoning_gym:spell_backward", "reasoning_gym:coin_flip"])
def test_the_verifier_never_raises(spec):
    task = tasks.get(spec)
    rng = random.Random(0)
    problems = task.prompts("test", 4) + (task.prompts("ood", 2) if task.dataset in rg.OOD_HARDER else [])
    strings = ["", " ", "\n", "Answer:", "<answer></answer>", "9" * 100_000, "Answer: " + "9" * 100_000,
               "<answer>" * 1000, "1e99999", "-" * 500 + "1"] + [_garbage(rng) for _ in range(300)]
    for text in strings:
        for problem in problems:
            score = task.score(problem, text)
            assert 0.0 <= score.reward <= 1.0 and (score.parsed or score.reward == 0.0)
    for odd in (None, 12, b"Answer: 4"):
        assert task.score(problems[0], odd) == rg.UNPARSED
    assert task.score(Problem("x", "?", "1", {}), "Answer: 1") == rg.UNPARSED  # meta without the entry


def test_a_raising_scorer_scores_zero_unparsed(monkeypatch):
    task = tasks.get(SMALL_SUM)
    problem = task.prompts("test", 1)[0]

    def boom(answer, entry):
        raise RuntimeError("scorer bug")

    monkeypatch.setattr(task._scorer("test"), "score_answer", boom)
    assert task.score(problem, f"Answer: {problem.answer}") == rg.UNPARSED


def test_clear_errors():
    with pytest.raises(ValueError, match=r"no dataset 'chain_summ'; did you mean chain_sum.*allowed: .*leg_counting"):
        ReasoningGymTask("chain_summ")
    with pytest.raises(ValueError, match="'countdown' is not supported: its scorer evaluates the model's answer"):
        tasks.get("reasoning_gym:countdown")
    with pytest.raises(ValueError, match="chain_sum config field 'max_term' does not exist; allowed: min_terms, max_terms"):
        tasks.get("reasoning_gym:chain_sum?max_term=3")
    with pytest.raises(ValueError, match="field 'seed' is set per split"):
        ReasoningGymTask("chain_sum", seed=3)
    with pytest.raises(ValueError, match=r"chain_sum config \{'min_terms': 5, 'max_terms': 2\} is not valid"):
        ReasoningGymTask("chain_sum", min_terms=5, max_terms=2)
    with pytest.raises(ValueError, match="answer_format='xml' is not an answer format; allowed: line, tags, plain"):
        ReasoningGymTask("chain_sum", answer_format="xml")
    with pytest.raises(ValueError, match="'max_terms' is not field=value"):
        tasks.get("reasoning_gym:chain_sum?max_terms")
    with pytest.raises(ValueError, match="names no dataset"):
        tasks.get("reasoning_gym:")
    with pytest.raises(ValueError, match="split='dev' is not a split"):
        tasks.get(SMALL_SUM).prompts("dev", 1)


def test_a_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # import reasoning_gym -> ImportError
    with pytest.raises(ImportError, match=r"need the reasoning-gym package: pip install -e '\.\[real\]'"):
        tasks.get("reasoning_gym:chain_sum")
    with pytest.raises(ConfigError, match=r"task='reasoning_gym:chain_sum' is not allowed.*pip install -e '\.\[real\]'"):
        RunConfig(task="reasoning_gym:chain_sum")


def test_names_config_in_the_name_and_round_trip():
    assert tasks.names() == ["coins", "countdown"]
    task = tasks.get("reasoning_gym:basic_arithmetic?max_terms=3&operators=[\"+\",\"-\"]&allow_parentheses=false")
    assert task.config == {"max_terms": 3, "operators": ("+", "-"), "allow_parentheses": False}
    assert all(set("*/") & set(p.meta["entry"]["metadata"]["expression"]) == set() for p in task.prompts("train", 30))
    again = tasks.get(task.spec)
    assert again.spec == task.spec and again.config == task.config
    assert tasks.get(SMALL_SUM, max_terms=3).config == {"max_digits": 1, "max_terms": 3}  # options override
    tagged = tasks.get(SMALL_SUM + "&answer_format=tags&partial_credit=true")
    assert (tagged.answer_format, tagged.partial_credit) == ("tags", True)
    assert tasks.get(tagged.spec).spec == tagged.spec
    with pytest.raises(ValueError, match="not a built-in task; allowed: coins, countdown or reasoning_gym:NAME"):
        tasks.get("chain_sum")


def test_the_default_real_task_is_the_measured_one():
    task = tasks.get(rg.DEFAULT_REAL_TASK)
    assert task.config == rg.DEFAULT_REAL_CONFIG and task.spec == rg.DEFAULT_REAL_TASK
    assert task.answer_format == "plain" and not task.partial_credit
    assert task.prompts("test", 1)[0].prompt == task.prompts("test", 1)[0].meta["entry"]["question"].rstrip()
    measured = Path(__file__).resolve().parents[1] / "docs" / "real-tasks.json"
    if measured.exists():
        report = json.loads(measured.read_text())
        assert report["default_task"] == rg.DEFAULT_REAL_TASK
        row = next(r for r in report["tasks"] if r["task"] == rg.DEFAULT_REAL_TASK)
        assert row["config"] == json.loads(json.dumps(rg.DEFAULT_REAL_CONFIG))
        assert 0.1 <= row["result"]["pass@1"] <= 0.6 and row["result"]["pass@16"] >= 0.6


def test_run_config_accepts_reasoning_gym_names():
    assert RunConfig(task=SMALL_SUM).task == SMALL_SUM
    assert RunConfig(task="reasoning_gym:leg_counting").task == "reasoning_gym:leg_counting"
    with pytest.raises(ConfigError, match=r"task='reasoning_gym:nope' is not allowed: reasoning_gym:NAME.*allowed") as info:
        RunConfig(task="reasoning_gym:nope")
    assert info.value.field == "task"
    with pytest.raises(ConfigError, match="config field 'digits' does not exist") as info:
        RunConfig(task="reasoning_gym:chain_sum?digits=2")
    assert info.value.field == "task"
    with pytest.raises(ConfigError, match="reasoning_gym:NAME") as info:
        RunConfig(task="no_such_task")
    assert info.value.field == "task"


def test_a_trainer_step_on_the_embedded_model():
    trainer = Trainer(RunConfig(task=SMALL_SUM, num_prompts=2, num_generations=2, max_completion_length=8))
    assert isinstance(trainer.task, ReasoningGymTask) and trainer.task.spec == SMALL_SUM
    result = trainer.step()
    assert len(result.batch.text) == 4 and result.batch.rewards.shape == (4,)
    assert trainer.history["reward_mean"].notna().all()
