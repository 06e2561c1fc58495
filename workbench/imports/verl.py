"""verl's rollout dumps and metrics logs, as verl's ``RayPPOTrainer`` writes them
(verl/trainer/ppo/ray_trainer.py, ``_log_rollout_data`` and ``_dump_generations``; verl/utils/tracking.py).

- ``trainer.rollout_data_dir/{step}.jsonl``: one JSON object per response, with ``input`` (the prompt
  decoded with ``skip_special_tokens=True``), ``output`` (the response, decoded alike), ``gts`` (the
  ground truth, ``reward_model.ground_truth``, or null), ``score`` (the sum of its token-level scores),
  ``step``, and each of the reward function's extra infos (``acc``, ``pred``, ...) as a further key.
  The dump records no group id (the ``uid`` of a prompt's n responses) and verl reorders its batch
  (``balance_batch``): a step's responses with the same ``input`` are taken as one group. ``pred``,
  where the reward function gives it, is the parsed answer.
- the metrics, where present: the ``file`` logger's JSONL (``{"step": N, "data": {name: value}}``) or
  a saved ``console`` log (lines ``step:N - name:value - name:value ...``), passed as ``metrics_log``
  or found beside the dumps (``*.log``, ``*.txt``, or a ``*.jsonl`` not named after a step).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from workbench.imports.source import (
    Imported,
    ImportFormatError,
    json_lines,
    numbers,
    prompt_groups,
    read_text,
    require_columns,
    require_values,
    rewards,
    split_steps,
    with_registry_names,
)

_DUMPED = ("input", "output", "score")
# verl's metric names of what the registry records (actor/kl_loss: verl's default kl_loss_type,
# low_var_kl, is the k3 estimate the workbench's kl is)
SAME_AS = {
    "actor/pg_loss": "loss",
    "actor/grad_norm": "grad_norm",
    "actor/lr": "learning_rate",
    "actor/pg_clipfrac": "clip_fraction",
    "actor/kl_loss": "kl",
    "timing_s/step": "step_time",
}
_CONSOLE = re.compile(r"(?:^|\s)step:(\d+) - (.*)$")
_NUMPY = re.compile(r"^np\.\w+\((.*)\)$")  # pprint of a numpy scalar: np.float64(0.5)


def read(path: Path, metrics_log: Path | None = None) -> Imported:
    """verl's ``rollout_data_dir`` (its ``{step}.jsonl`` files), and its metrics log where present."""
    if not path.is_dir():
        raise ImportFormatError(f"{path}: a verl import reads trainer.rollout_data_dir, a directory of STEP.jsonl")
    dumps = sorted((p for p in path.glob("*.jsonl") if p.stem.isdigit()), key=lambda p: int(p.stem))
    logs = [metrics_log] if metrics_log else [p for p in sorted(path.iterdir()) if _is_log(p)]
    if not dumps and not logs:
        raise ImportFormatError(
            f"{path}: holds no STEP.jsonl rollout dump (verl's trainer.rollout_data_dir) and no log"
        )
    imported = Imported(format="verl", source=path, label=path.name)
    for log in logs:
        try:
            imported.metrics.update(with_registry_names(read_metrics(log), SAME_AS))
            imported.notes.append(f"metrics: {log}")
        except ImportFormatError as error:
            if metrics_log:  # asked for: refused; found beside the dumps: another file, left out
                raise
            imported.notes.append(f"{log.name}: not a verl metrics log, left out ({error})")
    if dumps:
        frame = pd.concat([_dump(p) for p in dumps], ignore_index=True)
        frame["group"] = prompt_groups(frame)
        imported.rows = split_steps(frame)
        imported.notes.append("groups: a step's responses with the same input (verl's dump has no uid)")
    return imported


def _is_log(path: Path) -> bool:
    return path.is_file() and (path.suffix in (".log", ".txt") or (path.suffix == ".jsonl" and not path.stem.isdigit()))


def _dump(path: Path) -> pd.DataFrame:
    """One ``{step}.jsonl`` as rows: ``input``/``output``/``score`` become prompt, completion, reward."""
    records = json_lines(path)
    if not records:
        raise ImportFormatError(f"{path}: holds no rows")
    frame = pd.DataFrame.from_records(records)
    require_columns(frame, _DUMPED, path, "a verl rollout dump")
    require_values(frame, _DUMPED, path)
    frame = frame.rename(columns={"input": "prompt", "output": "completion"})
    frame["reward"] = rewards(frame, "score", path)
    frame["step"] = frame["step"].astype(int) if "step" in frame else int(path.stem)
    if "pred" in frame and "answer" not in frame:
        frame["answer"] = frame["pred"].map(lambda v: None if v is None else str(v))
    return frame


def read_metrics(path: Path) -> dict[int, dict[str, float]]:
    """A verl metrics log, the file logger's JSONL or a console log, as numbers by step."""
    if not path.is_file():
        raise ImportFormatError(f"metrics_log={str(path)!r} is not a file")
    if path.suffix == ".jsonl":
        by_step: dict[int, dict[str, float]] = {}
        for record in json_lines(path):
            if not isinstance(record.get("step"), int) or not isinstance(record.get("data"), dict):
                raise ImportFormatError(
                    f"{path}: {json.dumps(record)[:80]} is not a verl file-logger record {{'step': N, 'data': {{...}}}}"
                )
            by_step.setdefault(record["step"], {}).update(numbers(record["data"]))
        return by_step
    return _console(path)


def _console(path: Path) -> dict[int, dict[str, float]]:
    """The ``step:N - name:value - ...`` lines of a console log (other lines, Ray's prefixes, ignored)."""
    by_step: dict[int, dict[str, float]] = {}
    for line in read_text(path).splitlines():
        found = _CONSOLE.search(line)
        if not found:
            continue
        row = by_step.setdefault(int(found.group(1)), {})
        for item in found.group(2).split(" - "):
            name, _, text = item.rpartition(":")
            value = _number(text.strip())
            if name and value is not None:
                row[name.strip()] = value
    if not by_step:
        raise ImportFormatError(f"{path}: no 'step:N - name:value' line: not a verl console log")
    return by_step


def _number(text: str) -> float | None:
    inner = _NUMPY.match(text)
    try:
        return float(inner.group(1) if inner else text)
    except ValueError:
        return None
