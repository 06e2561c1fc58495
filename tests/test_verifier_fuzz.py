"""Property tests: no verifier raises on any string, rewards stay in [0, 1], and an
unparsed completion never earns reward."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.tasks import Coins, Countdown, DatasetTask, Problem, Score

FUZZ = settings(max_examples=2000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

COUNTDOWN = Countdown()
COINS = Coins()
NUMERIC = DatasetTask(
    [{"prompt": f"q{i}", "answer": a} for i, a in enumerate(["42", "-3.5", "#### 1,234", "0", "1e3", "0.000001"])],
    test_fraction=0,
)
EXACT = DatasetTask(
    [{"prompt": f"q{i}", "answer": a} for i, a in enumerate(["Paris", "007", "#### 12", " spaced ", "x,y"])],
    match="exact",
    test_fraction=0,
)

COUNTDOWN_PROBLEMS = (
    COUNTDOWN.prompts("test", 20, seed=0)
    + COUNTDOWN.prompts("ood", 10, seed=0)
    + [Problem("h", "Make 22 from 3 5 7.\n", "22", {"numbers": [3, 5, 7], "target": 22})]
)
COINS_PROBLEMS = COINS.prompts("test", 20, seed=0) + COINS.prompts("ood", 10, seed=0)

ARITHMETIC = "0123456789+-*=, \n#."


def near_chains(numbers: list[int]):
    """Step chains made mostly of the problem's numbers: reach deep into the parsers."""
    operand = st.one_of(st.sampled_from(numbers), st.integers(0, 200), st.integers(0, 10**8))
    step = st.builds(
        lambda a, op, b, c, sep: f"{a}{op}{b}={c}{sep}",
        operand,
        st.sampled_from("+-*/"),
        operand,
        st.one_of(operand, st.integers(-5, 5)),
        st.sampled_from(["", "", " ", "\n", ",", ", "]),
    )
    return st.lists(step, min_size=0, max_size=8).map(lambda steps: ",".join(steps))


@st.composite
def mutated_demonstration(draw, task, problem):
    """A demonstration (correct or a near miss) with a few random edits."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    text = task.demonstration(problem, rng, draw(st.sampled_from([0.0, 1.0])))
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["insert", "delete", "replace"]))
        char = draw(st.sampled_from(ARITHMETIC))
        if edit == "insert":
            text = text[:i] + char + text[i:]
        elif edit == "delete":
            text = text[:i] + text[i + 1 :]
        else:
            text = text[:i] + char + text[i + 1 :]
    return text


def texts(alphabet: str):
    return st.one_of(
        st.text(),
        st.text(alphabet=alphabet),
        st.text(alphabet=alphabet, min_size=150, max_size=400),
        st.text(alphabet=st.characters(categories=["Nd", "Pd", "Sm", "Zs"])),  # non-ASCII digits, dashes, spaces
    )


def check(score: Score) -> None:
    assert isinstance(score, Score)
    assert 0.0 <= score.reward <= 1.0
    assert score.reward in (0.0, 1.0)
    if not score.parsed:
        assert score.reward == 0.0
        assert score.strategy is None and score.answer is None


@st.composite
def countdown_case(draw):
    problem = draw(st.sampled_from(COUNTDOWN_PROBLEMS))
    text = draw(
        st.one_of(
            texts(ARITHMETIC),
            near_chains(problem.meta["numbers"] + [problem.meta["target"]]),
            mutated_demonstration(COUNTDOWN, problem),
        )
    )
    return problem, text


@st.composite
def coins_case(draw):
    problem = draw(st.sampled_from(COINS_PROBLEMS))
    text = draw(
        st.one_of(
            texts(ARITHMETIC),
            near_chains(problem.meta["coins"] + [problem.meta["amount"]]),
            mutated_demonstration(COINS, problem),
        )
    )
    return problem, text


NUMERIC_ALPHABET = "0123456789,.+-#: \n\\{}eAnswerbxd$%"
EXACT_ALPHABET = "Paris007#:, \nAnswer\t"


@FUZZ
@given(countdown_case())
def test_countdown_verifier(case):
    problem, text = case
    check(COUNTDOWN.score(problem, text))


@FUZZ
@given(coins_case())
def test_coins_verifier(case):
    problem, text = case
    check(COINS.score(problem, text))


@FUZZ
@given(st.sampled_from(NUMERIC.rows("train")), st.one_of(texts(NUMERIC_ALPHABET), st.from_regex(r"(?:.{0,20}(?:####|[Aa]nswer:|\\boxed\{))?[-+]?[0-9,]{0,12}(?:\.[0-9]{0,8})?.{0,10}", fullmatch=True)))
def test_dataset_numeric_verifier(problem, text):
    score = NUMERIC.score(problem, text)
    check(score)
    if score.parsed:
        assert score.strategy == score.answer


@FUZZ
@given(st.sampled_from(EXACT.rows("train")), texts(EXACT_ALPHABET))
def test_dataset_exact_verifier(problem, text):
    score = EXACT.score(problem, text)
    check(score)
    if score.reward == 1.0:
        assert score.answer == problem.answer.strip()


@settings(max_examples=300, deadline=None, database=None)
@given(st.sampled_from(COUNTDOWN_PROBLEMS + COINS_PROBLEMS), st.randoms(use_true_random=False))
def test_correct_demonstrations_always_score_one(problem, rng):
    task = COUNTDOWN if problem.prompt.startswith("Make") else COINS
    score = task.score(problem, task.demonstration(problem, rng, 1.0))
    assert score.reward == 1.0 and score.parsed
