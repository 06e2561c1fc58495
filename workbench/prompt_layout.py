"""How prompts are laid out in a batch: left padding, and the prefix all rows share.

Both decoders (the transformers path in ``sampling``, the lean ``merged_decoder``) and the
training forward pass lay prompts out the same way with these.
"""

from __future__ import annotations

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
