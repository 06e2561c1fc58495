"""One imported step as the workbench records a step: a ``RolloutBatch`` of its rows (with the
re-scored telemetry, or without tokens when no model was given), its rollouts frame and its metrics
row. The metrics are the registry's where the source supports them (rewards, groups, diversity; token
entropy, pivots and lengths only when re-scored) and the source's own numbers under its own names."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch

from workbench import metrics, tasks
from workbench.config import RunConfig
from workbench.imports.rescore import Scored
from workbench.metrics import registry as M
from workbench.step.batch import RolloutBatch
from workbench.step.stages import finish_rollouts

DISTINCT_N = (1, 2)  # distinct-n of each group's texts: distinct_1, distinct_2 (a mean over groups)
_OURS = ("prompt", "completion", "reward", "group", "answer", "strategy", "advantage")


def step_batch(rows: pd.DataFrame, scored: Scored | None, cfg: RunConfig) -> RolloutBatch:
    """The batch of one step's rows; without ``scored`` it holds no tokens (width 0)."""
    n = len(rows)
    s = scored or Scored.without_tokens(n)
    first = rows.drop_duplicates("group").set_index("group")
    batch = RolloutBatch(
        problems=[tasks.Problem(id=f"group {g}", prompt=str(first.at[g, "prompt"])) for g in range(len(first))],
        group=torch.tensor(rows["group"].to_numpy(), dtype=torch.long),
        prompt_ids=s.prompt_ids,
        ids=s.ids,
        mask=s.mask,
        logprobs=s.logprobs,
        entropy=s.entropy,
        topk_ids=s.topk_ids,
        topk_probs=s.topk_probs,
        text=rows["completion"].tolist(),
        mode=["normal"] * n,
        stage=[1] * n,
        rewards=torch.tensor(rows["reward"].to_numpy(dtype=float), dtype=torch.float32),
        answers=_labels(rows, "answer"),
        strategies=_labels(rows, "strategy"),
        advantages=torch.tensor(rows["advantage"].to_numpy(dtype=float)) if "advantage" in rows else None,
    )
    finish_rollouts(batch, cfg)
    return batch


def _labels(rows: pd.DataFrame, column: str) -> list[str | None]:
    if column not in rows:
        return [None] * len(rows)
    return [None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in rows[column]]


def step_frame(batch: RolloutBatch, rows: pd.DataFrame, step: int, tokenizer) -> pd.DataFrame:
    """``batch.to_frame`` with the source's other columns kept (a name the frame has already gets
    ``source_`` in front)."""
    frame = batch.to_frame(step, tokenizer)
    for column in rows.columns:
        if column not in _OURS:
            frame[f"source_{column}" if column in frame else column] = _storable(rows[column])
    return frame


def _storable(values: pd.Series) -> list:
    """A source column parquet can hold: one with nested values (verl's ``gts`` may be a list, a reward
    function's extra info a dict) as their JSON text, None kept."""
    nested = (dict, list, tuple, np.ndarray)
    if not any(isinstance(v, nested) for v in values):
        return values.tolist()
    return [
        None if v is None else json.dumps(v.tolist() if isinstance(v, np.ndarray) else v, default=str) for v in values
    ]


def step_row(step: int, batch: RolloutBatch, source: dict[str, float], rescored: bool) -> dict[str, float]:
    """The step's metrics row: the source's numbers, then what the imported rows say (theirs wins)."""
    groups = [r.tolist() for r in batch.group_rows()]
    rewards = batch.scored_rewards
    row: dict[str, float] = {**source, M.STEP: step}
    row[M.REWARD_MEAN] = float(rewards.mean())
    row[M.REWARD_STD] = float(rewards.std(correction=0))
    if bool(((rewards >= 0) & (rewards <= 1)).all()):  # a success (reward > 0.5) means something on [0, 1]
        row[M.ACCURACY] = float(tasks.is_success(rewards).float().mean())
    row[M.FRAC_REWARD_ZERO_STD] = metrics.frac_reward_zero_std(rewards, groups)
    diversity = metrics.group_diversity(groups, batch.scored_answers, batch.scored_strategies, rewards.tolist())
    if any(a is not None for a in batch.scored_answers):
        row[M.UNIQUE_ANSWERS] = diversity[M.UNIQUE_ANSWERS]
    if any(s is not None for s in batch.scored_strategies):
        row[M.DISTINCT_STRATEGIES] = diversity[M.DISTINCT_STRATEGIES]
        row[M.DISTINCT_CORRECT_STRATEGIES] = diversity[M.DISTINCT_CORRECT_STRATEGIES]
    for n in DISTINCT_N:
        row[f"distinct_{n}"] = float(np.mean([metrics.distinct_n([batch.text[i] for i in r], n) for r in groups]))
    if rescored:
        assert batch.pivots is not None  # step_batch found them (finish_rollouts)
        row.update(metrics.entropy_stats(batch.entropy, batch.mask))
        row[M.RESPONSE_LENGTH] = float(batch.response_lengths().mean())
        row.update(metrics.pivot_stats(batch.entropy, batch.mask, batch.pivots))
    return row
