"""DatasetTask: a Task over your own rows of (prompt, answer), from a local file or the Hub.

``DatasetTask.from_file("data.jsonl")`` reads a .json/.jsonl/.parquet/.csv file with
pandas; ``DatasetTask.from_hub("openai/gsm8k", config="main", prompt_column="question")``
uses ``datasets.load_dataset``. Answers in GSM8K form (``... #### 1,234``) are reduced to
the text after ``####`` with commas removed. Every other column of a row travels in
``Problem.meta``, so reward functions (see :mod:`workbench.tasks.rewards`) receive it.

Splits: ``test`` holds about ``test_fraction`` of the rows, chosen by a stable hash of
``(seed, prompt)`` -- the same on every machine, independent of row order, and identical
prompts always land in the same split -- and ``train`` the rest. ``ood`` exists only when
``ood_path`` or ``ood_rows`` is given.

The verifier parses the final answer of a completion (never evaluating it) as
:mod:`workbench.tasks.answers` describes: ``match="numeric"`` compares the parsed number with the
reference's within tolerance 1e-6, ``match="exact"`` the stripped text, case-sensitively.

The parsed answer is also the strategy label (answer-based clustering).
"""

from __future__ import annotations

import hashlib
import math
import random
import warnings
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

from workbench.tasks.answers import format_number, parse_exact_answer, parse_number_answer, reference_answer, to_decimal
from workbench.tasks.base import UNPARSED, Problem, Score, check_split


class DatasetError(ValueError):
    """A data file or its rows cannot serve as a task; the message names the file and what is wrong."""


MATCHES = ("numeric", "exact")
_FORMATS = (".json", ".jsonl", ".parquet", ".csv")
_TOLERANCE = Decimal("1e-6")


class DatasetTask:
    """A task over rows with a prompt and a reference answer; see the module docstring."""

    def __init__(
        self,
        rows: Any,
        prompt_column: str = "prompt",
        answer_column: str = "answer",
        match: str = "numeric",
        test_fraction: float = 0.1,
        seed: int = 0,
        name: str = "dataset",
        ood_rows: Any = None,
        source: str | None = None,
    ):
        if match not in MATCHES:
            raise DatasetError(f"match={match!r} is not a match mode; allowed: {', '.join(MATCHES)}")
        if not isinstance(test_fraction, (int, float)) or not 0 <= test_fraction < 1:
            raise DatasetError(f"test_fraction={test_fraction!r} must be a number in [0, 1)")
        self.name = name
        self.prompt_column = prompt_column
        self.answer_column = answer_column
        self.match = match
        self.test_fraction = float(test_fraction)
        self.seed = seed
        self.source = source or name
        problems = self._problems(rows, "rows")
        self._splits: dict[str, list[Problem]] = {}
        self._splits["train"], self._splits["test"] = self._split(problems)
        if ood_rows is not None:
            self._splits["ood"] = self._problems(ood_rows, "ood rows")

    # --- construction ---------------------------------------------------------------
    @classmethod
    def from_file(
        cls,
        path: str | Path,
        prompt_column: str = "prompt",
        answer_column: str = "answer",
        match: str = "numeric",
        test_fraction: float = 0.1,
        seed: int = 0,
        name: str | None = None,
        ood_path: str | Path | None = None,
        ood_rows: Any = None,
    ) -> DatasetTask:
        """Rows from a local .json, .jsonl, .parquet or .csv file (read with pandas)."""
        path = Path(path)
        if ood_path is not None:
            if ood_rows is not None:
                raise DatasetError("give ood_path or ood_rows, not both")
            ood_rows = _read_file(Path(ood_path), answer_column)
        return cls(
            _read_file(path, answer_column),
            prompt_column=prompt_column,
            answer_column=answer_column,
            match=match,
            test_fraction=test_fraction,
            seed=seed,
            name=name or path.stem,
            ood_rows=ood_rows,
            source=str(path),
        )

    @classmethod
    def from_hub(
        cls,
        name: str,
        split: str = "train",
        config: str | None = None,
        prompt_column: str = "prompt",
        answer_column: str = "answer",
        match: str = "numeric",
        test_fraction: float = 0.1,
        seed: int = 0,
        task_name: str | None = None,
        ood_path: str | Path | None = None,
        ood_rows: Any = None,
    ) -> DatasetTask:
        """Rows of ``split`` of a Hugging Face Hub dataset (``datasets.load_dataset``)."""
        try:
            import datasets
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                "DatasetTask.from_hub needs the `datasets` package (pip install datasets); "
                "or save the data to a file and use DatasetTask.from_file(path)"
            ) from e
        try:
            loaded = datasets.load_dataset(name, config, split=split)
            frame = loaded.to_pandas()
        except Exception as e:
            what = name + (f" (config {config!r})" if config else "") + f" split {split!r}"
            raise RuntimeError(
                f"could not load dataset {what} from the Hugging Face Hub: {type(e).__name__}: {e}. "
                "If the Hub is unreachable (offline), save the data as a local .jsonl/.parquet/.csv "
                "file and use DatasetTask.from_file(path) instead."
            ) from e
        if ood_path is not None:
            if ood_rows is not None:
                raise DatasetError("give ood_path or ood_rows, not both")
            ood_rows = _read_file(Path(ood_path), answer_column)
        return cls(
            frame,
            prompt_column=prompt_column,
            answer_column=answer_column,
            match=match,
            test_fraction=test_fraction,
            seed=seed,
            name=task_name or name.rstrip("/").split("/")[-1],
            ood_rows=ood_rows,
            source=name,
        )

    def _problems(self, rows: Any, what: str) -> list[Problem]:
        records = _records(rows)
        columns = list(records[0]) if records else list(getattr(rows, "columns", []))
        seen = set(columns)
        for record in records:  # rows of a list of dicts may differ in their keys
            for key in record:
                if key not in seen:
                    seen.add(key)
                    columns.append(key)
        for column in (self.prompt_column, self.answer_column):
            if column not in seen:
                raise DatasetError(
                    f"{self.source}: column {column!r} is missing from the {what}; "
                    f"available columns: {', '.join(map(repr, columns)) or '(none)'}"
                )
        problems: list[Problem] = []
        skipped = 0
        for index, record in enumerate(records):
            prompt = record.get(self.prompt_column)
            answer = record.get(self.answer_column)
            if _missing(prompt) or _missing(answer):
                skipped += 1
                continue
            if not isinstance(prompt, str):
                raise DatasetError(
                    f"{self.source}: row {index} has a {type(prompt).__name__} in prompt column "
                    f"{self.prompt_column!r}; prompts must be text (render chat messages to text first)"
                )
            reference = reference_answer(answer)
            if self.match == "numeric" and to_decimal(reference) is None:
                raise DatasetError(
                    f"{self.source}: row {index} has answer {str(answer)[:80]!r}, which is not a number; "
                    "use match='exact' for non-numeric answers"
                )
            meta = {k: _native(v) for k, v in record.items() if k not in (self.prompt_column, self.answer_column)}
            problems.append(Problem(id=str(index), prompt=prompt, answer=reference, meta=meta))
        if skipped:
            warnings.warn(f"{self.source}: skipped {skipped} {what} with an empty prompt or answer", stacklevel=3)
        if not problems:
            raise DatasetError(f"{self.source}: no usable {what} (need a prompt and an answer)")
        return problems

    def _split(self, problems: list[Problem]) -> tuple[list[Problem], list[Problem]]:
        """Test = the prompts of lowest stable hash until ``test_fraction`` of rows are covered."""
        want = round(self.test_fraction * len(problems))
        if self.test_fraction > 0 and len(problems) >= 2:
            want = min(max(want, 1), len(problems) - 1)
        by_prompt: dict[str, int] = {}
        for p in problems:
            by_prompt[p.prompt] = by_prompt.get(p.prompt, 0) + 1
        ranked = sorted(by_prompt, key=lambda text: _hash(f"{self.seed}|{text}"))
        test_prompts: set[str] = set()
        covered = 0
        for text in ranked:
            if covered >= want:
                break
            test_prompts.add(text)
            covered += by_prompt[text]
        train = [p for p in problems if p.prompt not in test_prompts]
        test = [p for p in problems if p.prompt in test_prompts]
        return train, test

    # --- the Task protocol ----------------------------------------------------------
    def rows(self, split: str) -> list[Problem]:
        """All problems of ``split`` (ids are the row numbers of the source)."""
        check_split(split)
        if split == "ood" and "ood" not in self._splits:
            raise DatasetError(
                f"task {self.name!r} has no ood split; pass ood_path= or ood_rows= to DatasetTask.from_file/from_hub"
            )
        return self._splits[split]

    def prompts(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        pool = self.rows(split)
        if n < 0:
            raise DatasetError(f"n={n} must be >= 0")
        if n and not pool:
            raise DatasetError(
                f"task {self.name!r} has no {split} rows (test_fraction={self.test_fraction}, "
                f"{len(self._splits['train']) + len(self._splits['test'])} rows)"
            )
        rng = random.Random(f"{self.name}|{split}|{seed}")
        order: list[int] = []
        while len(order) < n:  # shuffled passes: rows repeat only when n > rows
            indices = list(range(len(pool)))
            rng.shuffle(indices)
            order.extend(indices)
        out = []
        for index in order[:n]:
            p = pool[index]
            out.append(Problem(id=f"{self.name}/{split}/{p.id}", prompt=p.prompt, answer=p.answer, meta=dict(p.meta)))
        return out

    def score(self, problem: Problem, completion: str) -> Score:
        text: str | None
        try:
            if not isinstance(completion, str) or problem.answer is None:
                return UNPARSED
            if self.match == "numeric":
                value = parse_number_answer(completion)
                reference = to_decimal(problem.answer)
                if value is None:
                    return UNPARSED
                text = format_number(value)
                correct = reference is not None and abs(value - reference) <= _TOLERANCE
            else:
                text = parse_exact_answer(completion)
                if text is None:
                    return UNPARSED
                correct = text == problem.answer.strip()
            return Score(float(correct), text, text, parsed=True)
        except Exception:  # a verifier never raises on model output
            return UNPARSED

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self._splits.items())
        return f"DatasetTask(name={self.name!r}, match={self.match!r}, {sizes})"


# --- reading rows ---------------------------------------------------------------------
def _read_file(path: Path, answer_column: str):
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix not in _FORMATS:
        raise DatasetError(f"{path}: unsupported file type {suffix or '(none)'!r}; allowed: {', '.join(_FORMATS)}")
    if not path.is_file():
        raise DatasetError(f"{path}: no such data file")
    try:
        return _parse_file(path, suffix, answer_column)
    except (ValueError, UnicodeDecodeError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        message = " ".join(str(error).split())[:300]
        raise DatasetError(
            f"{path}: not a readable {suffix} file of rows ({type(error).__name__}: {message})"
        ) from error


def _parse_file(path: Path, suffix: str, answer_column: str):
    import pandas as pd

    if suffix == ".jsonl":
        return pd.read_json(path, lines=True, dtype=False)
    if suffix == ".json":
        try:
            return pd.read_json(path, dtype=False)
        except ValueError:  # a .json file holding JSON lines
            return pd.read_json(path, lines=True, dtype=False)
    if suffix == ".parquet":
        return pd.read_parquet(path)
    # CSV: keep the answer column as text (so "007" or "1,234" survive), infer the rest.
    header = pd.read_csv(path, nrows=0).columns
    dtype = {answer_column: str} if answer_column in header else None
    return pd.read_csv(path, dtype=dtype, keep_default_na=True)


def _records(rows: Any) -> list[dict]:
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # a pandas DataFrame
        return rows.to_dict("records")
    if hasattr(rows, "to_pandas"):  # a datasets.Dataset
        return rows.to_pandas().to_dict("records")
    if isinstance(rows, dict):  # columns -> lists
        keys = list(rows)
        return [dict(zip(keys, values)) for values in zip(*(rows[k] for k in keys))]
    if isinstance(rows, Iterable) and not isinstance(rows, (str, bytes)):
        records = list(rows)
        if not all(isinstance(r, dict) for r in records):
            raise DatasetError("rows must be dicts (or a DataFrame, or a dict of columns)")
        return records
    raise DatasetError(f"rows of type {type(rows).__name__} are not supported; give a list of dicts or a DataFrame")


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _native(value: Any) -> Any:
    """Plain Python values for meta: numpy scalars/arrays -> Python, NaN -> None."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    elif hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _hash(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
