"""What every reader of a run trained elsewhere gives: one common in-memory form (``Imported``), and
the checks each format shares (its text is UTF-8, its columns are there, its groups hold together).

A step's rows are a DataFrame with the columns ``prompt`` (text), ``completion`` (text), ``reward``
(float) and ``group`` (0, 1, ... within the step: the rows sampled from one prompt), optionally
``answer``, ``strategy``, ``advantage`` and ``prompt_messages`` (a chat prompt as JSON, for
re-scoring through the chat template), and any other column the source holds (kept as it is).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

REQUIRED = ("prompt", "completion", "reward")


class ImportFormatError(ValueError):
    """The source is not what its format says: one line naming the file, the field and what is allowed."""


@dataclass
class Imported:
    """A run as its source records it: each step's rows and the source's own metrics by step."""

    format: str
    source: Path
    label: str  # the run's name where the source gives one (config.yaml's task is external:LABEL)
    rows: dict[int, pd.DataFrame] = field(default_factory=dict)  # step -> its rows (the module docstring's columns)
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)  # step -> the source's numbers
    model: str | None = None  # the model the source names, when it names one
    notes: list[str] = field(default_factory=list)  # what the reader had to decide, for backend.json

    def steps(self) -> list[int]:
        return sorted(set(self.rows) | set(self.metrics))

    def counted_from_zero(self) -> Imported:
        """TRL and verl number a step by the optimizer steps done after it (1, 2, ...); the workbench
        by the steps done before it (0, 1, ...), as its drop-in for TRL records them."""
        self.rows = {step - 1: rows.assign(step=step - 1) for step, rows in self.rows.items()}
        self.metrics = {step - 1: numbers for step, numbers in self.metrics.items()}
        return self


def read_text(path: Path) -> str:
    """A source file's text; a file that is not UTF-8 is refused naming the byte where it stops being so."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ImportFormatError(
            f"{path}: line {line} is not UTF-8 text (byte {data[error.start : error.start + 1]!r} at offset "
            f"{error.start}): the file must be UTF-8, as TRL, verl and json.dumps write it"
        ) from None


def json_lines(path: Path) -> list[dict]:
    """The JSON objects of a JSONL file, one per non-empty line; a line that is not one is refused by number."""
    records = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise ImportFormatError(f"{path}: line {number} is not JSON ({error})") from None
        if not isinstance(record, dict):
            raise ImportFormatError(f"{path}: line {number} is a JSON {type(record).__name__}, not an object")
        records.append(record)
    return records


def require_columns(frame: pd.DataFrame, columns, path: Path, what: str) -> None:
    """Refuse a frame that lacks any of ``columns``, naming the first missing one and what the file has."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ImportFormatError(
            f"{path}: no {missing[0]!r} column ({what} needs {', '.join(columns)}; "
            f"the file has {', '.join(map(str, frame.columns)) or 'none'})"
        )


def require_values(frame: pd.DataFrame, columns, path: Path) -> None:
    """Refuse a row with no value in one of ``columns`` (a null prompt, completion or reward), naming it."""
    for column in columns:
        empty = frame[column].isna().to_numpy()
        if empty.any():
            raise ImportFormatError(f"{path}: row {int(empty.nonzero()[0][0])} has no {column!r} (every row needs one)")


def rewards(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """A reward column as floats; a value that is not a number is refused naming its row and value."""
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() & frame[column].notna()
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise ImportFormatError(f"{path}: {column}={frame[column].iloc[row]!r} in row {row} is not allowed: a number")
    return values.astype(float)


def prompt_groups(frame: pd.DataFrame) -> pd.Series:
    """One group id per step and prompt: what a source that records no group id (a verl dump, a
    generic file without ``group``) says of its rows."""
    return frame["step"].astype(str) + "\n" + frame["prompt"].astype(str)


def renumbered(group: pd.Series) -> pd.Series:
    """Given group ids as 0, 1, ... in order of first appearance (what RolloutBatch's ``group`` indexes)."""
    return pd.Series(pd.factorize(group)[0], index=group.index)


def check_groups(frame: pd.DataFrame, path: Path) -> None:
    """A group must be one step's and one prompt's: refuse a group id that spans steps or prompts."""
    steps = frame.groupby("group")["step"].nunique()
    if (steps > 1).any():
        group = steps[steps > 1].index[0]
        found = sorted(frame.loc[frame["group"] == group, "step"].unique().tolist())
        raise ImportFormatError(
            f"{path}: group {group!r} is split across steps {', '.join(map(str, found))}: a group is the "
            "responses one step sampled for one prompt (give each step's groups their own ids)"
        )
    prompts = frame.groupby("group")["prompt"].nunique()
    if (prompts > 1).any():
        raise ImportFormatError(
            f"{path}: group {prompts[prompts > 1].index[0]!r} holds {int(prompts.max())} different prompts: "
            "a group is the responses to one prompt"
        )


def split_steps(frame: pd.DataFrame) -> dict[int, pd.DataFrame]:
    """Each step's rows (step-major, the file's order within a step), their groups renumbered 0, 1, ..."""
    return {
        int(step): rows.assign(group=renumbered(rows["group"])).drop(columns="step").reset_index(drop=True)
        for step, rows in frame.groupby("step", sort=True)
    }


def numbers(record: dict) -> dict[str, float]:
    """The numeric fields of a log record (None, text and nested values left out)."""
    return {str(k): float(v) for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def with_registry_names(
    by_step: dict[int, dict[str, float]], same_as: Mapping[str, str]
) -> dict[int, dict[str, float]]:
    """The source's numbers, each also under the registry's name where it measures the same thing (the
    dashboard and the report then draw it in its panel), the source's name kept too."""
    return {
        step: {**row, **{ours: row[theirs] for theirs, ours in same_as.items() if theirs in row}}
        for step, row in by_step.items()
    }
