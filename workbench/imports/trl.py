"""TRL's logs of a GRPO run (TRL 1.16), as ``GRPOTrainer`` writes them into its ``output_dir``:

- ``completions/completions_{step:05d}.parquet`` (``log_completions=True``, written at every logging
  step): the columns ``step``, ``prompt``, ``completion`` (text, or a chat's messages), one column per
  reward function (named after it), the user's ``log_extra`` columns, and ``advantage``. The rows are
  the latest generation batch, gathered over processes: each ``num_generations`` consecutive rows are
  one prompt's group (TRL's own advantages take them so). A file equal to the one before is the same
  generation batch logged again (``num_iterations`` > 1) and is imported once.
- ``trainer_state.json`` (in ``output_dir`` after ``save_state``, and in each ``checkpoint-N/``):
  ``log_history``, one record per logging step with ``step``, ``loss``, ``reward``, ``reward_std``,
  ``rewards/NAME/mean``, ``entropy``, ``kl``, ``learning_rate``, ``grad_norm``, ``completions/*``, ...

The reward of a row is the sum of its reward-function columns (TRL's default ``reward_weights`` of 1;
a logged ``reward`` that says otherwise is noted in backend.json). Either part may be absent.
"""

from __future__ import annotations

import json
import math
import re
from functools import reduce
from pathlib import Path

import pandas as pd

from workbench.imports.source import (
    Imported,
    ImportFormatError,
    numbers,
    read_text,
    require_columns,
    split_steps,
    with_registry_names,
)
from workbench.metrics import registry as M

COMPLETIONS = "completions"
STATE = "trainer_state.json"
_FIXED = ("step", "prompt", "completion", "advantage")


def read(path: Path) -> Imported:
    """A TRL ``output_dir`` (or its ``completions/`` directory)."""
    out_dir = path.parent if path.name == COMPLETIONS else path
    if not out_dir.is_dir():
        raise ImportFormatError(f"{path}: a TRL import reads the GRPOTrainer's output_dir, a directory")
    history, state_file = _log_history(out_dir)
    imported = Imported(
        format="trl",
        source=out_dir,
        label=out_dir.name,
        metrics=with_registry_names(history, M.TRL_NAMES),
        model=_base_model(out_dir),
    )
    files = sorted((out_dir / COMPLETIONS).glob("completions_*.parquet"))
    if not files and not history:
        raise ImportFormatError(
            f"{out_dir}: holds neither {COMPLETIONS}/completions_*.parquet (GRPOConfig(log_completions=True)) "
            f"nor a {STATE} with a log_history: not a TRL GRPOTrainer output_dir"
        )
    if not files:
        imported.notes.append(f"no {COMPLETIONS}/ (log_completions was off): metrics only, from {state_file}")
    else:
        frame = _completions(files, imported.notes)
        reward_columns = _reward_columns(frame, history, files[0])
        frame["reward"] = frame[reward_columns].sum(axis=1, min_count=1)
        imported.notes.append(f"reward: the sum of TRL's reward-function columns {', '.join(reward_columns)}")
        _check_weights(frame, history, imported.notes)
        frame["group"] = _groups(frame, files[0])
        imported.rows = split_steps(frame)
    return imported


def _completions(files: list[Path], notes: list[str]) -> pd.DataFrame:
    """Every logged step's rows, one file per step; a file equal to the one before left out."""
    parts: list[pd.DataFrame] = []
    for file in files:
        try:
            part = pd.read_parquet(file)
        except Exception as error:  # pyarrow raises its own types for a file that is not parquet
            raise ImportFormatError(f"{file}: not a parquet file ({error})") from None
        require_columns(part, ("step", "prompt", "completion"), file, "a TRL completions file")
        part = _as_text(part)
        if parts and _same_batch(parts[-1], part):
            notes.append(f"{file.name}: the batch of step {int(parts[-1]['step'].iloc[0])} logged again, left out")
            continue
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def _as_text(part: pd.DataFrame) -> pd.DataFrame:
    """Prompts and completions as text; a chat prompt's messages kept as JSON (re-scoring renders them
    through the model's chat template, as TRL did)."""
    chat = [_messages(p) for p in part["prompt"]]
    part = part.assign(
        prompt=[_render(m) if m is not None else str(p) for p, m in zip(part["prompt"], chat)],
        completion=[_content(c) for c in part["completion"]],
    )
    if any(m is not None for m in chat):
        part["prompt_messages"] = [json.dumps(m) if m is not None else None for m in chat]
    return part


def _messages(value) -> list[dict] | None:
    if isinstance(value, str):
        return None
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]


def _render(messages: list[dict]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _content(value) -> str:
    """A completion's text: as logged, or the contents of its messages."""
    return value if isinstance(value, str) else "".join(str(m["content"]) for m in value)


def _same_batch(before: pd.DataFrame, after: pd.DataFrame) -> bool:
    columns = [c for c in before.columns if c != "step"]
    return list(after.columns) == list(before.columns) and before[columns].equals(after[columns])


def _reward_columns(frame: pd.DataFrame, history: dict[int, dict], file: Path) -> list[str]:
    """The reward functions' columns: those the log history names (``rewards/NAME/mean``), else every
    numeric column TRL did not add itself (its ``log_extra`` columns cannot be told apart then)."""
    logged = {m.split("/")[1] for row in history.values() for m in row if re.fullmatch(r"rewards/[^/]+/mean", m)}
    columns = [c for c in frame.columns if c in logged] if logged else []
    if not columns:
        columns = [
            c
            for c in frame.columns
            if c not in _FIXED and c != "prompt_messages" and pd.api.types.is_numeric_dtype(frame[c])
        ]
    if not columns:
        raise ImportFormatError(f"{file}: no reward-function column (a numeric column besides {', '.join(_FIXED)})")
    return columns


def _check_weights(frame: pd.DataFrame, history: dict[int, dict], notes: list[str]) -> None:
    """Note a step whose logged ``reward`` is not the mean of the summed columns (weights other than 1)."""
    for step, rows in frame.groupby("step"):
        logged = history.get(int(step), {}).get("reward")
        if logged is not None and not math.isclose(float(rows["reward"].mean()), logged, rel_tol=1e-4, abs_tol=1e-5):
            notes.append(
                f"step {step}: TRL logged reward {logged:.6g} but the reward columns sum to a mean of "
                f"{rows['reward'].mean():.6g} (reward_weights other than 1?): the sum is imported"
            )
            return


def _groups(frame: pd.DataFrame, file: Path) -> pd.Series:
    """TRL's groups: blocks of ``num_generations`` consecutive rows, found as the largest block size
    that divides every run of equal prompts (a prompt drawn twice in a row is two groups)."""
    runs = (frame["prompt"] != frame["prompt"].shift()) | (frame["step"] != frame["step"].shift())
    lengths = runs.cumsum().value_counts().tolist()
    size = reduce(math.gcd, lengths)
    position = frame.groupby("step").cumcount()
    if size < 2:
        raise ImportFormatError(
            f"{file}: the rows do not come in groups of consecutive equal prompts (TRL logs num_generations >= 2 "
            "rows per prompt in a row): were these files written by GRPOTrainer?"
        )
    return frame["step"].astype(str) + ":" + (position // size).astype(str)


def _log_history(out_dir: Path) -> tuple[dict[int, dict], Path | None]:
    """The log history of the newest trainer_state.json (the highest ``global_step``), one dict of numbers
    per step (a step's training and evaluation records merged; the end-of-training summary left out)."""
    states = {
        file: _state(file) for file in [out_dir / STATE, *out_dir.glob(f"checkpoint-*/{STATE}")] if file.is_file()
    }
    if not states:
        return {}, None
    newest = max(states, key=lambda file: states[file].get("global_step", 0))
    merged: dict[int, dict] = {}
    for record in states[newest].get("log_history", []):
        if isinstance(record, dict) and "step" in record and "train_runtime" not in record:
            merged.setdefault(int(record["step"]), {}).update(numbers(record))
            merged[int(record["step"])].pop("step")
    return merged, newest


def _state(file: Path) -> dict:
    try:
        state = json.loads(read_text(file))
    except json.JSONDecodeError as error:
        raise ImportFormatError(f"{file}: not JSON ({error})") from None
    if not isinstance(state, dict):
        raise ImportFormatError(f"{file}: a JSON {type(state).__name__}, not a trainer state (an object)")
    return state


def _base_model(out_dir: Path) -> str | None:
    """The base model TRL's model card names (``base_model:`` in README.md's front matter), if any."""
    card = out_dir / "README.md"
    found = re.search(r"^base_model:\s*(\S+)\s*$", card.read_text(errors="replace"), re.M) if card.is_file() else None
    return found.group(1) if found else None
