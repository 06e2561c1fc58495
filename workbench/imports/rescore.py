"""Re-scoring: what a source trained elsewhere does not record (each token's log-prob, entropy and
top-5 alternatives; the pivots found from them) recovered by running a model over its text.

The model is a name or directory (``Policy.from_pretrained``), optionally with an adapter: a workbench
checkpoint (``checkpoints/step-N/`` or its ``adapter.safetensors``) or a PEFT adapter directory
(``adapter_config.json``, as TRL saves a LoRA run). A prompt is tokenized as the source recorded it:
its text as is, or a chat's messages through the model's chat template; a completion is its text's
tokens (the sampled ids are not in any source). The EOS token ending a response is in no source's
text either (they decode with ``skip_special_tokens``); given the run's ``max_completion_length``, a
response shorter than it stopped at EOS, and the EOS is put back and scored, as the trainer's own
numbers (TRL's logged entropy, lengths) count it. The numbers are ``trl_rows.telemetry``'s: the one
scoring pass the TRL backend records with.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pandas as pd
import torch

from workbench.engine import devices
from workbench.imports.source import ImportFormatError
from workbench.integrations.trl_rows import TOP_ALTERNATIVES, telemetry
from workbench.models.policy import LoraSettings, Policy

WORKBENCH_ADAPTER = "adapter.safetensors"
PEFT_CONFIG = "adapter_config.json"


@dataclass
class Scored:
    """One step's rows as token tensors with their telemetry (right-padded, ``mask`` 1 on tokens)."""

    prompt_ids: list[list[int]]
    ids: torch.Tensor  # [N, T]
    mask: torch.Tensor  # [N, T] float
    logprobs: torch.Tensor  # [N, T]
    entropy: torch.Tensor  # [N, T]
    topk_ids: torch.Tensor  # [N, T, k]
    topk_probs: torch.Tensor  # [N, T, k]

    @classmethod
    def without_tokens(cls, n: int) -> Scored:
        """``n`` rows of no tokens (width 0): what an import without a model records of each response."""
        k = TOP_ALTERNATIVES
        return cls(
            [[] for _ in range(n)],
            torch.zeros((n, 0), dtype=torch.long),
            torch.zeros((n, 0)),
            torch.zeros((n, 0)),
            torch.zeros((n, 0)),
            torch.zeros((n, 0, k), dtype=torch.long),
            torch.zeros((n, 0, k)),
        )

    @classmethod
    def joined(cls, parts: list[Scored]) -> Scored:
        """Batches of rows as one, right-padded with zeros to the longest row of all."""
        width = max(p.ids.shape[1] for p in parts)

        def cat(name: str) -> torch.Tensor:
            tensors = [getattr(p, name) for p in parts]
            return torch.cat([_padded(t, width) for t in tensors])

        return cls(
            [ids for p in parts for ids in p.prompt_ids],
            *(cat(name) for name in ("ids", "mask", "logprobs", "entropy", "topk_ids", "topk_probs")),
        )


def _padded(t: torch.Tensor, width: int) -> torch.Tensor:
    """[N, T, ...] zero-padded on the right to [N, width, ...]."""
    pad = [0, 0] * (t.dim() - 2) + [0, width - t.shape[1]]
    return torch.nn.functional.pad(t, pad)


class Rescorer:
    def __init__(
        self,
        model: str,
        adapter: str | Path | None = None,
        temperature: float = 1.0,
        max_completion_length: int | None = None,
        device: str = "auto",
    ):
        self.device = devices.device(device)
        self.temperature, self.max_completion_length = temperature, max_completion_length
        self.adapter = str(Path(adapter).resolve()) if adapter else None
        if adapter is None:
            self.policy = Policy.from_pretrained(model, device=self.device)
        else:
            self.policy = _with_adapter(model, Path(adapter), self.device)
        self.policy.model.eval()
        self.dtype = devices.autocast_dtype(devices.recorded_auto(self.device))  # telemetry: float32 on a CPU

    @property
    def tokenizer(self):
        return self.policy.tokenizer

    def autocast(self):
        return contextlib.nullcontext() if self.dtype is None else torch.autocast(self.device.type, dtype=self.dtype)

    def score(self, rows: pd.DataFrame, batch_rows: int = 64, done: Callable[[int], object] | None = None) -> Scored:
        """The telemetry of every row of a step, ``batch_rows`` rows a batch (each padded to its own
        longest row, then split further as ``telemetry`` keeps the logits in bounds); ``done(n)`` after
        each batch of n rows (a progress bar)."""
        parts = []
        for start in range(0, len(rows), batch_rows):
            part = rows.iloc[start : start + batch_rows]
            parts.append(self._score(part))
            if done is not None:
                done(len(part))
        return Scored.joined(parts) if parts else Scored.without_tokens(0)

    def _score(self, rows: pd.DataFrame) -> Scored:
        prompt_ids = self._prompts(rows)
        tokens = [self._ended(t) for t in self.policy.encode(rows["completion"].tolist())]
        width = max((len(t) for t in tokens), default=0)
        ids = torch.tensor([t + [0] * (width - len(t)) for t in tokens], dtype=torch.long).view(len(tokens), width)
        mask = torch.tensor([[1.0] * len(t) + [0.0] * (width - len(t)) for t in tokens]).view(len(tokens), width)
        logp, entropy, topk_ids, topk_probs = telemetry(self.policy, prompt_ids, ids, self.temperature, self.autocast())
        return Scored(prompt_ids, ids, mask, logp * mask, entropy * mask, topk_ids, topk_probs)

    def _ended(self, tokens: list[int]) -> list[int]:
        """A response's tokens with the EOS it stopped at, when it stopped before the length limit."""
        eos, limit = self.tokenizer.eos_token_id, self.max_completion_length
        return tokens + [eos] if limit and eos is not None and len(tokens) < limit else tokens

    def _prompts(self, rows: pd.DataFrame) -> list[list[int]]:
        """Each row's prompt ids: a chat's messages through the chat template, else the text as is."""
        chats = rows["prompt_messages"].tolist() if "prompt_messages" in rows else [None] * len(rows)
        texts = []
        for text, chat in zip(rows["prompt"].tolist(), chats):
            if isinstance(chat, str) and getattr(self.tokenizer, "chat_template", None):
                rendered = self.tokenizer.apply_chat_template(
                    json.loads(chat), add_generation_prompt=True, tokenize=False
                )
                texts.append(cast(str, rendered))
            else:
                texts.append(text)
        return self.policy.encode(texts)


def _with_adapter(model: str, adapter: Path, device: torch.device) -> Policy:
    """``model`` with the adapter in ``adapter``: a workbench checkpoint's or a PEFT directory's."""
    if (adapter / PEFT_CONFIG).is_file():
        return _peft(model, adapter, device)
    file = adapter / WORKBENCH_ADAPTER if adapter.is_dir() else adapter
    if not file.is_file():
        raise ImportFormatError(
            f"adapter={str(adapter)!r} is not allowed: a workbench checkpoint (checkpoints/step-N/ or its "
            f"{WORKBENCH_ADAPTER}) or a PEFT adapter directory ({PEFT_CONFIG})"
        )
    lora = _run_lora(file)
    policy = Policy.from_pretrained(model, lora=lora, device=device)
    policy.load_adapter(file)
    return policy


def _run_lora(file: Path) -> LoraSettings | None:
    """The LoRA settings of the run a workbench checkpoint belongs to (its config.yaml), when it is in one."""
    from workbench.config import RunConfig

    for parent in file.parents:
        if (parent / "config.yaml").is_file():
            cfg = RunConfig.from_yaml(parent / "config.yaml")
            return LoraSettings(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules)
    return None


def _peft(model: str, adapter: Path, device: torch.device) -> Policy:
    """A PEFT adapter directory: its LoRA settings, then its weights (``set_peft_model_state_dict``)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    config = json.loads((adapter / PEFT_CONFIG).read_text())
    targets = config.get("target_modules") or "all-linear"
    lora = LoraSettings(
        config.get("r", 8), config.get("lora_alpha", 16), 0.0, targets if isinstance(targets, str) else sorted(targets)
    )
    policy = Policy.from_pretrained(model, lora=lora, device=device)
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise ImportFormatError(f"{adapter}: a PEFT adapter directory without adapter_model.safetensors")
    result = set_peft_model_state_dict(policy.model, load_file(str(weights)))
    unexpected = list(getattr(result, "unexpected_keys", []))
    if unexpected:
        raise ImportFormatError(f"{weights}: tensors that fit no layer of {model!r}: {unexpected[:3]}")
    return policy
