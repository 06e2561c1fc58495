"""How prompts are laid out in a batch: left padding, and the prefix all rows share.

Both decoders (the transformers path in ``sampling``, the lean ``merged_decoder``) and the
training forward pass lay prompts out the same way with these.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask for a list of token-id lists."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids, mask


# Below this many shared leading tokens, prefilling them once is not worth a second call.
MIN_SHARED_PREFIX = 16


def common_prefix_length(rows: list[list[int]]) -> int:
    """Number of leading tokens every row shares (e.g. a system prompt)."""
    if len(rows) < 2:
        return 0
    first, n = rows[0], min(len(r) for r in rows)
    for i in range(n):
        if any(r[i] != first[i] for r in rows):
            return i
    return n


def shared_prefix_length(rows: list[list[int]]) -> int:
    """Leading tokens worth computing once for all ``rows``: their common prefix, leaving every
    row at least one token of its own (the next forward pass needs it), or 0 when shorter than
    ``MIN_SHARED_PREFIX``."""
    shared = min(common_prefix_length(rows), min(len(r) for r in rows) - 1)
    return shared if shared >= MIN_SHARED_PREFIX else 0


@dataclass
class SharedLayout:
    """N prompt rows laid out for a pass that runs what they share once: the prefix every row
    shares (``prefix``, possibly empty), then each DISTINCT prompt's rest, left-padded."""

    prefix: list[int]  # the shared leading tokens (shared_prefix_length)
    row_of: torch.Tensor  # [N] long: each row's distinct prompt
    rest_ids: torch.Tensor  # [D, R] long
    rest_valid: torch.Tensor  # [D, R] bool
    rest_positions: torch.Tensor  # [D, R] long: position ids, counted after the prefix


def shared_layout(rows: list[list[int]], pad_id: int, device) -> SharedLayout:
    distinct = list(dict.fromkeys(tuple(r) for r in rows))
    index = {r: i for i, r in enumerate(distinct)}
    shared = shared_prefix_length([list(r) for r in distinct])
    rest_ids, rest_mask = left_pad([list(r[shared:]) for r in distinct], pad_id)
    rest_valid = rest_mask.to(device).bool()
    return SharedLayout(
        prefix=list(distinct[0][:shared]),
        row_of=torch.tensor([index[tuple(r)] for r in rows], device=device),
        rest_ids=rest_ids.to(device),
        rest_valid=rest_valid,
        rest_positions=shared + (rest_valid.long().cumsum(-1) - 1).clamp(min=0),
    )
