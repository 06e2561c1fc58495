"""ReasoningGymTask: a Task over a procedural dataset of the ``reasoning-gym`` package.

``ReasoningGymTask("chain_sum", max_terms=2)`` or, by name, ``tasks.get("reasoning_gym:chain_sum")``
and ``RunConfig(task="reasoning_gym:chain_sum")``. A name may carry the dataset config after a
``?``, so a run's ``config.yaml`` records the whole task::

    reasoning_gym:chain_sum?max_terms=2&max_digits=1&ood.max_terms=5

Values are JSON literals (``2``, ``true``, ``["+","-"]``), anything else is a string;
``ood.FIELD`` sets a field of the ood config, and ``answer_format`` / ``partial_credit`` are
options of the task itself. Fields not given keep reasoning-gym's defaults; ``seed`` and
``size`` are set per split by the task.

Splits. Each ``(split, seed)`` draws from its own reasoning-gym dataset whose seed comes from a
stable hash (sha256) of ``(name, split, seed)``, placed in a range of its own per split:
train in ``[0, 2**30)``, test in ``[2**30, 2**31)``, ood in ``[2**31, 3 * 2**30)`` (reasoning-gym
seeds item ``i`` with ``seed + i``; a split never reaches the next range), so the splits never
share a random stream. On top of that a question is held out when the stable hash of its text
falls in bucket 0 of 5: ``test`` and ``ood`` keep only held-out questions and ``train`` only the
others, so no question of test or ood can ever appear in train, even on tasks with few
distinct questions. ``ood`` uses a harder config of the same dataset: ``ood_config`` when given,
else the rule of :data:`OOD_HARDER` (more terms, more animals, larger values: ranges that start
above the train config's maximum). A dataset without a rule and no ``ood_config`` raises only
when the ood split is requested.

Prompts are the dataset's question plus one line saying how to answer (``answer_format``):
``"line"`` (default) asks for a last line ``Answer: ...``, ``"tags"`` for reasoning-gym's
``<answer>...</answer>`` tags, ``"plain"`` adds nothing.

The verifier never evaluates model text and never raises. It extracts the answer from the
last ``<answer>...</answer>`` pair, else from the text after the last ``answer:`` (any case)
on its line, else after an unclosed ``<answer>``; without any of these it takes the last
number of the completion (numeric references) or its last non-empty line. For a numeric
reference (``"-4"``, ``"0.3125"``) the first number of that answer text is taken (after the
last ``=`` when there is one: ``Answer: 3 + 4 = 7``), with commas and a ``+`` sign removed and
``7.0`` written ``7``; a fraction ``10/32`` stays one (coin_flip's scorer reads fractions).
The reward is reasoning-gym's own ``dataset.score_answer(answer=..., entry=...)``; with
``partial_credit=False`` (default) it is 1.0 when that score is 1 and 0.0 otherwise, because
its substring credit (answer ``"14"`` for reference ``"4"`` scores 0.5) rewards wrong numbers.
A scorer that raises scores 0 unparsed. The strategy of a completion is its parsed answer
(answer clusters, as :class:`DatasetTask` does).

Datasets whose scorer evaluates the model's answer as code (``eval`` or
``sympy.parse_expr``) are refused: :data:`EVALUATING_SCORERS`.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
from typing import Any

from workbench.tasks.answers import NUMBER, format_number, last_match, to_decimal
from workbench.tasks.base import UNPARSED, Problem, Score, check_split, stable_bucket

PREFIX = "reasoning_gym:"
INSTALL_HINT = "pip install -e '.[real]'"

# How the prompt asks for the answer. A 135M instruct model follows "Answer: N" far more often
# than XML tags (docs/real-tasks.json).
ANSWER_FORMATS = {
    "line": "\nEnd with a last line of the form: Answer: <your answer>",
    "tags": "\nPut your final answer within <answer> </answer> tags.",
    "plain": "",
}

# The harder ood config of a dataset, from its (train) config: (low field, high field, rule);
# "+k": low = high + 1, high = high + k; "xk": low = high + 1, high = high * k. The ood range
# starts above the train maximum, so an ood problem is never a train problem.
OOD_HARDER: dict[str, tuple[tuple[str, str, str], ...]] = {
    "basic_arithmetic": (("min_terms", "max_terms", "+2"),),
    "chain_sum": (("min_terms", "max_terms", "+2"),),
    "decimal_chain_sum": (("min_terms", "max_terms", "+2"),),
    "products": (("min_digits", "max_digits", "+1"),),
    "leg_counting": (("min_animals", "max_animals", "+3"),),
    "letter_counting": (("min_words", "max_words", "+5"),),
    "gcd": (("min_value", "max_value", "x10"),),
    "lcm": (("min_value", "max_value", "x10"),),
    "simple_equations": (("min_terms", "max_terms", "+2"),),
    "coin_flip": (("min_trials", "max_trials", "+5"),),
    "number_sorting": (("min_numbers", "max_numbers", "+3"),),
}

# Datasets whose score_answer runs the model's answer through eval or sympy.parse_expr (which
# evals): refused, because the workbench never evaluates model output. "composite" mixes
# datasets (and scorers); build one task per dataset instead.
EVALUATING_SCORERS = frozenset(
    {
        "binary_matrix",
        "countdown",
        "intermediate_integration",
        "n_queens",
        "polynomial_multiplication",
        "puzzle24",
        "simple_integration",
        "spiral_matrix",
        "string_insertion",
        "composite",
    }
)

_SPLIT_INDEX = {"train": 0, "test": 1, "ood": 2}
_SEED_SPAN = 2**30  # each split's dataset seeds lie in [index * span, (index + 1) * span)
_CHUNK = 256  # items per reasoning-gym dataset instance; chunk c starts at seed base + c * _CHUNK
_HELD_OUT_BUCKETS = 5
_MAX_ANSWER = 200  # characters of answer text handed to a scorer
_TAGGED = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_OPEN_TAG = re.compile(r"<answer>", re.IGNORECASE)
_ANSWER_MARK = re.compile(r"answer\s*:", re.IGNORECASE)
_DENOMINATOR = re.compile(r"\s*/\s*([0-9]{1,30})(?![0-9.])")
_NUMERATOR = re.compile(r"(?<![0-9.])(-?[0-9]{1,30})\s*/\s*$")


def _import_reasoning_gym():
    try:
        import reasoning_gym
        from reasoning_gym.factory import DATASETS
    except ImportError as e:
        raise ImportError(f"reasoning_gym:NAME tasks need the reasoning-gym package: {INSTALL_HINT}") from e
    return reasoning_gym, DATASETS


class ReasoningGymTask:
    """A reasoning-gym dataset as a Task; see the module docstring."""

    def __init__(
        self,
        name: str,
        ood_config: dict[str, Any] | None = None,
        answer_format: str = "line",
        partial_credit: bool = False,
        **config: Any,
    ):
        _, datasets = _import_reasoning_gym()
        if not isinstance(name, str) or name not in datasets:
            close = difflib.get_close_matches(str(name), list(datasets), n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ValueError(
                f"reasoning-gym has no dataset {name!r}; {hint}allowed: {len(datasets)} datasets, e.g. "
                f"{', '.join(sorted(OOD_HARDER))} (all: reasoning_gym.factory.DATASETS)"
            )
        if name in EVALUATING_SCORERS:
            raise ValueError(
                f"reasoning-gym dataset {name!r} is not supported: its scorer evaluates the model's answer as code "
                f"(eval or sympy.parse_expr), and the workbench never evaluates model output; allowed: the other "
                f"datasets, e.g. {', '.join(sorted(OOD_HARDER))}"
            )
        if answer_format not in ANSWER_FORMATS:
            raise ValueError(
                f"answer_format={answer_format!r} is not an answer format; allowed: {', '.join(ANSWER_FORMATS)}"
            )
        if not isinstance(partial_credit, bool):
            raise ValueError(f"partial_credit={partial_credit!r} must be true or false")
        if ood_config is not None and not isinstance(ood_config, dict):
            raise ValueError(f"ood_config={ood_config!r} must be a mapping of config field to value")
        self.dataset = name
        self.name = PREFIX + name
        self.answer_format = answer_format
        self.partial_credit = partial_credit
        self._dataset_cls, self._config_cls = datasets[name]
        self.fields = tuple(f.name for f in dataclasses.fields(self._config_cls) if f.name not in ("seed", "size"))
        self.config = self._check_config(config, "config")
        self.ood_config_given = None if ood_config is None else self._check_config(ood_config, "ood_config")
        self._scorers: dict[str, Any] = {"train": self._make_dataset(self.config, seed=0, size=1, what="config")}

    # --- construction by name -----------------------------------------------------------
    @classmethod
    def from_name(cls, spec: str, **options: Any) -> ReasoningGymTask:
        """The task of ``reasoning_gym:NAME[?field=value&...]``; ``options`` override the name's."""
        name, config, ood_config = parse_name(spec)
        if "ood_config" in options:
            ood_config = {**ood_config, **(options.pop("ood_config") or {})}
        config.update(options)
        return cls(name, ood_config=ood_config or None, **config)

    @property
    def spec(self) -> str:
        """The full name of this task (``reasoning_gym:NAME?...``): ``tasks.get(spec)`` rebuilds it."""
        parts = [f"{k}={_literal(v)}" for k, v in sorted(self.config.items())]
        parts += [f"ood.{k}={_literal(v)}" for k, v in sorted((self.ood_config_given or {}).items())]
        if self.answer_format != "line":
            parts.append(f"answer_format={self.answer_format}")
        if self.partial_credit:
            parts.append("partial_credit=true")
        return self.name + ("?" + "&".join(parts) if parts else "")

    def _check_config(self, config: dict[str, Any], what: str) -> dict[str, Any]:
        for key in config:
            if key in ("seed", "size"):
                raise ValueError(f"{self.dataset} {what} field {key!r} is set per split by the task; remove it")
            if key not in self.fields:
                raise ValueError(
                    f"{self.dataset} {what} field {key!r} does not exist; allowed: {', '.join(self.fields)}"
                )
        return dict(config)

    def _make_dataset(self, config: dict[str, Any], seed: int, size: int, what: str):
        try:
            cfg = self._config_cls(**config, seed=seed, size=size)
            return self._dataset_cls(config=cfg)
        except Exception as e:
            raise ValueError(f"{self.dataset} {what} {config} is not valid: {type(e).__name__}: {e}") from None

    # --- splits -------------------------------------------------------------------------
    def split_config(self, split: str) -> dict[str, Any]:
        """The dataset config of ``split``: the config for train and test, a harder one for ood."""
        check_split(split)
        if split != "ood":
            return dict(self.config)
        if self.ood_config_given is not None:
            return {**self.config, **self.ood_config_given}
        if self.dataset not in OOD_HARDER:
            raise ValueError(
                f"task {self.name!r} has no ood setting; pass ood_config={{...}} (or ood.FIELD=value in the name) "
                f"with a harder config; datasets with a built-in ood rule: {', '.join(sorted(OOD_HARDER))}"
            )
        defaults = {f.name: f.default for f in dataclasses.fields(self._config_cls)}
        harder = dict(self.config)
        for low, high, rule in OOD_HARDER[self.dataset]:
            top = harder.get(high, defaults[high])
            step = int(rule[1:])
            harder[low], harder[high] = top + 1, (top + step if rule[0] == "+" else top * step)
        return harder

    def dataset_seed(self, split: str, seed: int) -> int:
        """The reasoning-gym seed of ``(split, seed)``: a stable hash in the split's own range."""
        check_split(split)
        digest = hashlib.sha256(f"{self.name}|{split}|{seed}".encode()).digest()
        return _SPLIT_INDEX[split] * _SEED_SPAN + int.from_bytes(digest[:8], "big") % (_SEED_SPAN // 2)

    def held_out(self, question: str) -> bool:
        """Whether a question belongs to test/ood (stable hash bucket 0 of 5) rather than train."""
        return stable_bucket(f"{self.name}|{question}", _HELD_OUT_BUCKETS) == 0

    def _scorer(self, split: str):
        """A dataset instance of the split's config, for its score_answer (test shares train's)."""
        key = "ood" if split == "ood" else "train"
        if key not in self._scorers:
            self._scorers[key] = self._make_dataset(self.split_config(key), 0, 1, f"{key} config")
        return self._scorers[key]

    def prompts(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        check_split(split)
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n={n!r} must be an integer >= 0")
        if n == 0:
            return []
        config = self.split_config(split)
        self._scorer(split)  # validates the split's config with a clear error
        base = self.dataset_seed(split, seed)
        want_held_out = split != "train"
        limit = 50 * n + 1000
        problems: list[Problem] = []
        drawn = 0
        while len(problems) < n:
            if drawn >= limit:
                raise ValueError(
                    f"task {self.name!r}: only {len(problems)} of {n} {split} problems in {drawn} draws; "
                    f"the {split} config {config} has too few distinct questions"
                )
            chunk = self._make_dataset(config, base + drawn, _CHUNK, f"{split} config")
            for index in range(_CHUNK):
                entry = chunk[index]
                drawn += 1
                question = entry["question"]
                if self.held_out(question) == want_held_out:
                    problems.append(self._problem(entry, split, len(problems)))
                    if len(problems) == n:
                        break
        return problems

    def _problem(self, entry: dict[str, Any], split: str, index: int) -> Problem:
        prompt = entry["question"].rstrip() + ANSWER_FORMATS[self.answer_format]
        return Problem(
            id=f"{self.name}/{split}/{index}",
            prompt=prompt,
            answer=str(entry["answer"]),
            meta={"entry": entry, "split": split},
        )

    # --- the verifier -------------------------------------------------------------------
    def score(self, problem: Problem, completion: str) -> Score:
        try:
            if not isinstance(completion, str) or problem.answer is None:
                return UNPARSED
            entry = problem.meta["entry"]
            numeric = to_decimal(problem.answer) is not None
            answer = extract_answer(completion, numeric)
            if answer is None:
                return UNPARSED
            scorer = self._scorer(problem.meta.get("split", "train"))
            value = float(scorer.score_answer(answer=answer, entry=entry))
            if not 0.0 <= value <= 1.0:  # NaN included
                value = 0.0
            reward = value if self.partial_credit else float(value >= 1.0)
            return Score(reward, answer, answer, parsed=True)
        except Exception:  # a verifier never raises on model output
            return UNPARSED

    def __repr__(self) -> str:
        return f"ReasoningGymTask({self.spec!r})"


# --- answer extraction --------------------------------------------------------------------
def extract_answer(completion: str, numeric: bool) -> str | None:
    """The final answer of a completion (see the module docstring), or None; never evaluates."""
    segment = _answer_segment(completion)
    if numeric:
        if segment is not None:
            if "=" in segment:
                segment = segment.rsplit("=", 1)[1]
            match = NUMBER.search(segment)
        else:
            match = last_match(NUMBER, completion)
        value = to_decimal(match.group()) if match else None
        if match is None or value is None:
            return None
        after = _DENOMINATOR.match(completion if segment is None else segment, match.end())
        before = _NUMERATOR.search((completion if segment is None else segment)[: match.start()])
        if after and "." not in match.group():  # a fraction, as coin_flip accepts: 10/32
            return f"{format_number(value)}/{int(after.group(1))}"
        if before and value == int(value) and value > 0:
            return f"{before.group(1)}/{format_number(value)}"
        return format_number(value)
    if segment is None:
        segment = next((line for line in reversed(completion.splitlines()) if line.strip()), "")
    text = segment.strip()
    return text if 0 < len(text) <= _MAX_ANSWER else None


def _answer_segment(text: str) -> str | None:
    """The answer text: last closed tag pair, else the line after the last ``answer:``, else the
    line after an unclosed ``<answer>``; None when none of these occurs."""
    tagged = last_match(_TAGGED, text)
    if tagged is not None:
        return tagged.group(1).strip()
    for marks in (_ANSWER_MARK, _OPEN_TAG):
        last = last_match(marks, text)
        if last is not None:
            rest = text[last.end() :]
            return next((line for line in rest.splitlines() if line.strip()), "")
    return None


# --- names --------------------------------------------------------------------------------
def parse_name(spec: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``reasoning_gym:NAME?field=value&ood.field=value`` -> (NAME, config and task options, ood config)."""
    if not isinstance(spec, str) or not spec.startswith(PREFIX):
        raise ValueError(f"task={spec!r} is not a reasoning-gym task name; allowed: {PREFIX}NAME[?field=value&...]")
    name, _, query = spec[len(PREFIX) :].partition("?")
    if not name:
        raise ValueError(f"task={spec!r} names no dataset; allowed: {PREFIX}NAME, e.g. {PREFIX}chain_sum")
    config: dict[str, Any] = {}
    ood: dict[str, Any] = {}
    for part in filter(None, query.split("&")):
        key, eq, raw = part.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"task={spec!r}: {part!r} is not field=value")
        value = _value(raw.strip())
        if key.startswith("ood."):
            ood[key[4:]] = value
        else:
            config[key] = value
    return name, config, ood


def _value(raw: str) -> Any:
    """A JSON literal (numbers, true/false, null, lists, quoted strings), else the raw string."""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return tuple(value) if isinstance(value, list) else value


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return value if _value(value) == value else json.dumps(value)
    return json.dumps(list(value) if isinstance(value, tuple) else value, separators=(",", ":"))


# The default task for the real model, SmolLM2-135M-Instruct (models.SMOLLM2): sums of two one-digit
# numbers, the question alone (answer_format="plain": an appended answer instruction lowered its pass@1).
# Measured with bench/real_tasks.py (docs/real-tasks.json); tasks.get(DEFAULT_REAL_TASK) builds exactly
# that task, whose dataset config is DEFAULT_REAL_CONFIG.
DEFAULT_REAL_CONFIG: dict[str, Any] = {"max_digits": 1, "max_terms": 2}
DEFAULT_REAL_TASK = "reasoning_gym:chain_sum?max_digits=1&max_terms=2&answer_format=plain"
