"""RolloutBatch: the one data structure every stage of a step reads and writes.

Rows are responses, in prompt-major order within each stage/mode block; ``group`` says
which prompt a row belongs to. Token tensors are [N, T], right-padded, ``mask`` = 1 on
generated tokens (the EOS included). Widgets draw only what is stored here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch

from workbench.models.sampling import Samples
from workbench.tasks import Problem

# fields that hand state from one stage of a step to the next (not per-row data)
STEP_HANDOFFS = ("step_numbers", "graph_logprobs", "training_rows")

_Filled = TypeVar("_Filled")


@dataclass
class RolloutBatch:
    problems: list[Problem]  # one per group
    group: torch.Tensor  # [N] index into problems
    prompt_ids: list[list[int]]  # [N] token ids of the prompt each response was sampled after
    ids: torch.Tensor  # [N, T]
    mask: torch.Tensor  # [N, T]
    logprobs: torch.Tensor  # [N, T] behaviour log-probs (the sampling model's)
    entropy: torch.Tensor  # [N, T] nats
    topk_ids: torch.Tensor  # [N, T, k]
    topk_probs: torch.Tensor  # [N, T, k]
    text: list[str]
    mode: list[str]  # "normal" or "high_entropy"
    stage: list[int]  # 1 or 2 (EEPO); 1 otherwise
    rewards: torch.Tensor | None = None  # [N]
    answers: list[str | None] | None = None
    strategies: list[str | None] | None = None
    parsed: torch.Tensor | None = None  # [N] bool
    finished: torch.Tensor | None = None  # [N] bool: ended with EOS, else cut off at the length limit
    advantages: torch.Tensor | None = None  # [N] sequence advantage
    token_advantages: torch.Tensor | None = None  # [N, T]
    gate: torch.Tensor | None = None  # [N, T] token gate weight (ERPO), ones otherwise
    pivots: torch.Tensor | None = None  # [N, T] bool critical decision pivots
    ref_logprobs: torch.Tensor | None = None  # [N, T] the reference's log-probs, when a method already ran it (ERPO)
    # [N, T] k3 KL of the sampled token's log-prob to the reference's (finish_rollouts), NaN on rows not measured
    token_kl: torch.Tensor | None = None
    # [N] on training rows (``training_rows``): the sampled row each one is; None: they are the sampled rows
    source_row: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # method-specific per-token values
    # What a method's hooks hand on to later stages of the same step; never saved.
    # Numbers for the step's metrics row (EEPO's unlearning figures): kept by select and concat.
    step_numbers: dict[str, Any] = field(default_factory=dict)
    # (rows, their log-probs [rows, T] under the current policy WITH their graph), when a method already
    # ran them forward (EEPO's unlearning pass): the update's first micro-batch then reuses them
    graph_logprobs: tuple[torch.Tensor, torch.Tensor] | None = None
    # the rows the loss trains on when they are not these (Policy Split: each response in both contexts)
    training_rows: RolloutBatch | None = None

    @classmethod
    def from_samples(
        cls,
        problems: list[Problem],
        prompt_ids: list[list[int]],
        samples: Samples,
        texts: list[str],
        num_generations: int,
        mode: str = "normal",
        stage: int = 1,
    ) -> RolloutBatch:
        """Rows of ``samples`` were drawn prompt-major: ``num_generations`` per problem."""
        n = samples.ids.shape[0]
        return cls(
            problems=list(problems),
            group=torch.arange(len(problems)).repeat_interleave(num_generations),
            prompt_ids=[p for p in prompt_ids for _ in range(num_generations)],
            ids=samples.ids,
            mask=samples.mask,
            logprobs=samples.logprobs,
            entropy=samples.entropy,
            topk_ids=samples.topk_ids,
            topk_probs=samples.topk_probs,
            text=texts,
            mode=[mode] * n,
            stage=[stage] * n,
            finished=samples.finished,
        )

    def rows_to_train(self) -> RolloutBatch:
        """The rows the loss trains on: ``training_rows`` where a method set them, else these."""
        return self.training_rows if self.training_rows is not None else self

    def from_training_rows(self, trained: RolloutBatch, values: torch.Tensor) -> torch.Tensor:
        """[N, T] per-token ``values`` [rows of ``trained``, T] of the training rows, on these sampled
        rows: each from the training row that is the response in the context it was sampled in
        (its sampler log-probs known, not NaN); NaN where there is none."""
        if trained.source_row is None:
            return values
        own = ~trained.logprobs.isnan().any(-1)
        out = torch.full(self.mask.shape, float("nan"))
        out[trained.source_row[own]] = values[own].to(out.dtype)
        return out

    # --- fields a stage of the step fills, for code that runs after that stage --------------------
    @property
    def scored_rewards(self) -> torch.Tensor:
        return _filled(self.rewards, "rewards", "scoring")

    @property
    def scored_answers(self) -> list[str | None]:
        return _filled(self.answers, "answers", "scoring")

    @property
    def scored_strategies(self) -> list[str | None]:
        return _filled(self.strategies, "strategies", "scoring")

    @property
    def computed_advantages(self) -> torch.Tensor:
        return _filled(self.advantages, "advantages", "the method's advantages")

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def num_groups(self) -> int:
        return len(self.problems)

    def group_rows(self) -> list[torch.Tensor]:
        """Row indices of each group."""
        return [torch.nonzero(self.group == g).squeeze(-1) for g in range(self.num_groups)]

    def grouped(self, values: torch.Tensor) -> torch.Tensor:
        """[N] values as [groups, G] (every group must have the same size)."""
        order = torch.argsort(self.group, stable=True)
        return values[order].view(self.num_groups, -1)

    def ungrouped(self, values: torch.Tensor) -> torch.Tensor:
        """Inverse of ``grouped``: [groups, G] back to row order [N]."""
        order = torch.argsort(self.group, stable=True)
        out = torch.empty_like(values.reshape(-1))
        out[order] = values.reshape(-1)
        return out

    @staticmethod
    def concat(batches: list[RolloutBatch]) -> RolloutBatch:
        """Rows of several batches over the same problems (e.g. EEPO's two stages)."""
        first = batches[0]
        width = max(b.ids.shape[1] for b in batches)
        values: dict[str, Any] = {}  # field name -> its value, each field of its own type
        for f in fields(RolloutBatch):
            parts = [getattr(b, f.name) for b in batches]
            if f.name == "problems":
                values[f.name] = first.problems
            elif f.name in STEP_HANDOFFS:
                values[f.name] = {k: v for p in parts for k, v in p.items()} if f.name == "step_numbers" else None
            elif f.name == "extras":
                keys = set.intersection(*(set(p) for p in parts)) if parts else set()
                values[f.name] = {k: torch.cat([_pad(p[k], width) for p in parts]) for k in keys}
            elif any(p is None for p in parts):
                values[f.name] = None
            elif isinstance(parts[0], torch.Tensor):
                values[f.name] = torch.cat([_pad(p, width) if p.dim() > 1 else p for p in parts])
            else:
                values[f.name] = [x for p in parts for x in p]
        return RolloutBatch(**values)

    def select(self, rows) -> RolloutBatch:
        """A batch of the given rows (problems kept whole; ``group`` still indexes them)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        values: dict[str, Any] = {}  # field name -> its value, each field of its own type
        for f in fields(RolloutBatch):
            v = getattr(self, f.name)
            if f.name == "problems":
                values[f.name] = v
            elif f.name in STEP_HANDOFFS:  # row-indexed hand-offs no longer fit the rows
                values[f.name] = dict(v) if f.name == "step_numbers" else None
            elif f.name == "extras":
                values[f.name] = {k: t[rows] for k, t in v.items()}
            elif v is None:
                values[f.name] = None
            elif isinstance(v, torch.Tensor):
                values[f.name] = v[rows]
            else:
                values[f.name] = [v[i] for i in rows.tolist()]
        return RolloutBatch(**values)

    def response_lengths(self) -> torch.Tensor:
        return self.mask.sum(-1)

    def tokens(self, row: int, tokenizer) -> list[str]:
        """The text of each generated token of ``row`` (for token strips)."""
        n = int(self.mask[row].sum().item())
        return [tokenizer.decode([t]) for t in self.ids[row, :n].tolist()]

    def to_frame(self, step: int, tokenizer=None) -> pd.DataFrame:
        """One row per response, token values as lists: what ``rollouts/step-N.parquet`` holds."""
        lengths = self.response_lengths().long().tolist()

        def per_token(t: torch.Tensor | None):
            if t is None:
                return [None] * len(self)
            return [t[i, :n].detach().float().cpu().numpy() for i, n in enumerate(lengths)]

        frame = pd.DataFrame(
            {
                "step": step,
                "problem_id": [self.problems[g].id for g in self.group.tolist()],
                "group": self.group.tolist(),
                "mode": self.mode,
                "stage": self.stage,
                "prompt": [self.problems[g].prompt for g in self.group.tolist()],
                "completion": self.text,
                "reward": _list(self.rewards, len(self)),
                "answer": self.answers or [None] * len(self),
                "strategy": self.strategies or [None] * len(self),
                "parsed": _list(self.parsed, len(self)),
                "length": lengths,
                "finished": _list(self.finished, len(self)),  # ended with EOS, else cut off at the limit
                "advantage": _list(self.advantages, len(self)),
                "token_ids": [self.ids[i, :n].cpu().numpy() for i, n in enumerate(lengths)],
                "logprob": per_token(self.logprobs),
                "entropy": per_token(self.entropy),
                "token_advantage": per_token(self.token_advantages),
                "gate": per_token(self.gate),
                "pivot": per_token(self.pivots),
                "kl": _measured(per_token(self.token_kl)),
                # the top-k alternatives of each token, flattened [length * k] (k = their length / "length")
                "topk_ids": [self.topk_ids[i, :n].reshape(-1).cpu().numpy() for i, n in enumerate(lengths)],
                "topk_probs": [self.topk_probs[i, :n].reshape(-1).float().cpu().numpy() for i, n in enumerate(lengths)],
            }
        )
        if tokenizer is not None:
            frame["tokens"] = [self.tokens(i, tokenizer) for i in range(len(self))]
        return frame

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> RolloutBatch:
        """The batch a rollouts frame (``to_frame``, a rollouts/step-N.parquet) records, to draw a
        step another process ran. What the file does not hold stays empty: no top-k alternatives
        (k = 0 in a file written before they were recorded), no prompt ids, problems without their
        answer key or verifier data, no method extras."""
        missing = sorted(
            {"group", "prompt", "completion", "mode", "stage", "token_ids", "entropy", "logprob"} - set(frame.columns)
        )
        if missing:
            raise ValueError(
                f"a rollouts frame needs the columns {', '.join(missing)}: the frame RolloutBatch.to_frame writes"
            )
        frame = frame.reset_index(drop=True)
        lengths = [len(ids) for ids in frame["token_ids"]]
        n, width = len(frame), max(lengths, default=0)

        def per_token(column: str, dtype: torch.dtype) -> torch.Tensor | None:
            return _token_column(frame, column, lengths, dtype)

        first = frame.drop_duplicates("group").set_index("group")
        ids = per_token("token_ids", torch.long)
        rewards = _column(frame, "reward", torch.float32)
        scored = rewards is not None  # before scoring a batch has no answers and no strategies
        return cls(
            problems=[
                Problem(
                    id=str(first.at[g, "problem_id"]) if "problem_id" in first else f"group {g}",
                    prompt=str(first.at[g, "prompt"]),
                )
                for g in range(int(frame["group"].max()) + 1)
            ],
            group=torch.tensor(frame["group"].to_numpy(), dtype=torch.long),
            prompt_ids=[[] for _ in range(n)],
            ids=ids if ids is not None else torch.zeros((n, 0), dtype=torch.long),
            # float, as sampled
            mask=torch.as_tensor([[1.0] * k + [0.0] * (width - k) for k in lengths]).view(n, width),
            logprobs=_sampled_column(frame, "logprob", lengths),
            entropy=_sampled_column(frame, "entropy", lengths),
            topk_ids=_alternatives(frame, "topk_ids", lengths, width, torch.long),
            topk_probs=_alternatives(frame, "topk_probs", lengths, width, torch.float32),
            text=frame["completion"].tolist(),
            mode=frame["mode"].tolist(),
            stage=frame["stage"].tolist(),
            rewards=rewards,
            answers=_labels(frame, "answer") if scored else None,
            strategies=_labels(frame, "strategy") if scored else None,
            parsed=_column(frame, "parsed", torch.bool),
            finished=_column(frame, "finished", torch.bool),
            advantages=_column(frame, "advantage", torch.float32),
            token_advantages=per_token("token_advantage", torch.float32),
            gate=per_token("gate", torch.float32),
            pivots=per_token("pivot", torch.bool),
            token_kl=per_token("kl", torch.float32),
        )


def _filled(value: _Filled | None, name: str, stage: str) -> _Filled:
    """A batch field that ``stage`` of the step fills; a clear error where code reads it earlier."""
    if value is None:
        raise RuntimeError(f"RolloutBatch.{name} is read before {stage} filled it")
    return value


def _token_column(frame: pd.DataFrame, column: str, lengths: list[int], dtype: torch.dtype) -> torch.Tensor | None:
    """[N, T] from a frame's per-response token values (``lengths[i]`` of row i, right-padded with
    0); None when the frame has no such column or no value in it."""
    n, width = len(frame), max(lengths, default=0)
    values = frame[column].tolist() if column in frame else [None] * n
    if all(v is None for v in values):
        return None
    out = torch.zeros((n, width), dtype=dtype)
    for i, v in enumerate(values):
        out[i, : lengths[i]] = torch.as_tensor(np.asarray(v, dtype=float)).to(dtype)
    return out


def _sampled_column(frame: pd.DataFrame, column: str, lengths: list[int]) -> torch.Tensor:
    """``_token_column`` of a value the sampler gives every token (log-probs, entropy)."""
    values = _token_column(frame, column, lengths, torch.float32)
    if values is None:  # to_frame writes the sampler's values for every row
        raise ValueError(
            f"the rollouts frame's {column} column holds no values: "
            "the frame RolloutBatch.to_frame writes has one per response"
        )
    return values


def _labels(frame: pd.DataFrame, column: str) -> list | None:
    """A label column (answers, strategies) with None where unparsed (parquet reads it back as NaN)."""
    if column not in frame:
        return None
    return [None if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in frame[column].tolist()]


def _alternatives(frame: pd.DataFrame, column: str, lengths: list[int], width: int, dtype: torch.dtype) -> torch.Tensor:
    """[N, T, k] from a frame's flattened per-response top-k column; k = 0 when it has none."""
    flat = frame[column].tolist() if column in frame else []
    k = next((len(v) // n for v, n in zip(flat, lengths) if n), 0)
    out = torch.zeros((len(lengths), width, k), dtype=dtype)
    for i, (v, n) in enumerate(zip(flat, lengths)):
        out[i, :n] = torch.as_tensor(np.array(v)).to(dtype).reshape(n, k)
    return out


def _pad(t: torch.Tensor, width: int) -> torch.Tensor:
    if t.shape[1] == width:
        return t
    pad = torch.zeros((t.shape[0], width - t.shape[1], *t.shape[2:]), dtype=t.dtype, device=t.device)
    return torch.cat([t, pad], dim=1)


def _measured(rows: list) -> list:
    """Per-token values of each row, None for a row not measured (all NaN)."""
    return [None if v is None or np.isnan(v).all() else v for v in rows]


def _list(t: torch.Tensor | None, n: int) -> list:
    return [None] * n if t is None else t.detach().cpu().numpy().tolist()


def _column(frame: pd.DataFrame, column: str, dtype: torch.dtype) -> torch.Tensor | None:
    """One value per row as a tensor; None when the frame has no such column or no value in it."""
    if column not in frame or frame[column].isna().all():
        return None
    return torch.tensor(frame[column].astype(float).to_numpy()).to(dtype)


class RecordedTokens:
    """The text of each token id as a rollouts frame recorded it (its ``tokens`` column, written
    when the run had a tokenizer): what is needed to show a recorded step's tokens without
    loading the model's tokenizer. ``decode`` is the one tokenizer method it has; an id the
    frame never recorded reads ``⟨id⟩``."""

    def __init__(self, frame: pd.DataFrame):
        if "tokens" not in frame:
            raise ValueError("the rollouts frame has no tokens column: its run was written without a tokenizer")
        self.text: dict[int, str] = {}
        for ids, texts in zip(frame["token_ids"], frame["tokens"]):
            if texts is not None:
                self.text.update(zip((int(i) for i in ids), texts))

    def decode(self, ids) -> str:
        return "".join(self.text.get(int(i), f"⟨{int(i)}⟩") for i in ids)
