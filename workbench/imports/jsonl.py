"""The generic format: a JSONL or parquet file of ``step, prompt, completion, reward[, group][, any
columns]``, one row per response. Without ``group`` the rows of a step with the same prompt are one
group; with it, a group id belongs to one step and one prompt. ``answer`` and ``strategy``, when
present, feed the diversity metrics; every other column is kept in the run's rollouts."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from workbench.imports.source import (
    REQUIRED,
    Imported,
    ImportFormatError,
    check_groups,
    json_lines,
    prompt_groups,
    require_columns,
    require_values,
    rewards,
    split_steps,
)

SUFFIXES = (".jsonl", ".parquet")


def read(path: Path) -> Imported:
    """The rows of a generic file, split into steps."""
    frame = _frame(path)
    require_columns(frame, ("step", *REQUIRED), path, "a generic import")
    require_values(frame, ("step", *REQUIRED), path)
    frame = frame.assign(step=_steps(frame, path), reward=rewards(frame, "reward", path))
    for column in ("prompt", "completion"):
        frame[column] = frame[column].astype(str)
    if "group" in frame:
        if frame["group"].isna().any():
            row = int(frame["group"].isna().to_numpy().nonzero()[0][0])
            raise ImportFormatError(f"{path}: row {row} has no group (give every row one, or drop the column)")
        check_groups(frame, path)
    else:
        frame["group"] = prompt_groups(frame)
    return Imported(format="jsonl", source=path, label=path.stem, rows=split_steps(frame))


def _frame(path: Path) -> pd.DataFrame:
    if path.suffix not in SUFFIXES:
        raise ImportFormatError(f"{path}: a generic import reads {', '.join(SUFFIXES)} files, not {path.suffix!r}")
    if path.suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except Exception as error:  # pyarrow raises its own types for a file that is not parquet
            raise ImportFormatError(f"{path}: not a parquet file ({error})") from None
    records = json_lines(path)
    if not records:
        raise ImportFormatError(f"{path}: holds no rows")
    return pd.DataFrame.from_records(records)


def _steps(frame: pd.DataFrame, path: Path) -> pd.Series:
    """The step column as integers >= 0; anything else is refused naming the row and value."""
    values = pd.to_numeric(frame["step"], errors="coerce")
    bad = values.isna() | (values < 0) | (values % 1 != 0)
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise ImportFormatError(
            f"{path}: step={frame['step'].iloc[row]!r} in row {row} is not allowed: an integer >= 0"
        )
    return values.astype(int)
