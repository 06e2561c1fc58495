"""A checkpoint directory's files: what ``RunStore.save_checkpoint`` writes into one and how
``RunStore.load_checkpoint`` reads one back, checked, before anything is applied.

``state.json`` is written last and records the sha256 of every other file (an engine's own files
too: the TRL backend's checkpoint lies in ``trl/``), so a truncated or altered file is refused with
an error that names it. Optimizer and RNG state load with
``torch.load(weights_only=True)``; the adapter only from safetensors. Where the directory goes
(a temporary renamed into place) is the run directory's concern (:mod:`workbench.run.store`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

CHECKPOINT_FILES = ("adapter.safetensors", "optimizer.pt", "state.json")
HASHED_FILES = ("adapter.safetensors", "optimizer.pt")  # state.json records their sha256 (and any engine file's)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated or corrupt; the message names the file."""


@dataclass
class Checkpoint:
    """What ``RunStore.load_checkpoint`` read: every tensor, checked, nothing applied yet."""

    path: Path
    step: int
    adapter: dict[str, torch.Tensor]
    optimizer: dict
    torch_rng: torch.Tensor
    state: dict


def write_checkpoint(directory: Path, step: int, policy, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """The files of the checkpoint of ``step`` into ``directory`` (new; it may hold an engine's own
    checkpoint files already, which the digests then cover too)."""
    policy.save_adapter(directory / "adapter.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}, directory / "optimizer.pt")
    # state.json is written last and records the other files' digests: a file changed on disk
    # afterwards (truncated, bit-flipped, swapped) is caught on load, not trained on.
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != "state.json")
    digests = {p.relative_to(directory).as_posix(): _sha256(p) for p in files}
    (directory / "state.json").write_text(json.dumps({**state, "step": step, "sha256": digests}))


def read_checkpoint(path: Path, step: int) -> Checkpoint:
    """The checkpoint of ``step`` in directory ``path``, every file checked; CheckpointError
    naming the file when one is missing, truncated or corrupt."""
    for name in CHECKPOINT_FILES:
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint file {path / name} is missing")
    state = _read_state(path / "state.json", step)
    for name, digest in state.get("sha256", {}).items():
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint file {path / name} is missing (state.json records its sha256)")
        if _sha256(path / name) != digest:
            raise CheckpointError(
                f"checkpoint file {path / name} is truncated or corrupt: its sha256 "
                "differs from the one recorded in state.json"
            )
    adapter = _read_adapter(path / "adapter.safetensors")
    optimizer, torch_rng = _read_optimizer(path / "optimizer.pt")
    return Checkpoint(path, step, adapter, optimizer, torch_rng, state)


def _read_state(path: Path, step: int) -> dict:
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"checkpoint file {path} is unreadable: {error}") from error
    if not isinstance(state, dict) or state.get("step") != step:
        raise CheckpointError(
            f"checkpoint file {path} is corrupt: it should hold a JSON object with "
            f'"step": {step}, not {str(state)[:80]!r}'
        )
    digests, nan_skips = state.get("sha256"), state.get("nan_skips", 0)
    if (
        not isinstance(digests, dict)
        or not set(HASHED_FILES) <= set(digests)
        or any(not isinstance(name, str) or ".." in Path(name).parts or Path(name).is_absolute() for name in digests)
    ):
        raise CheckpointError(
            f'checkpoint file {path} is corrupt: its "sha256" must record the digests of '
            f"{' and '.join(HASHED_FILES)}, so that they can be checked before they are loaded"
        )
    if not isinstance(nan_skips, int) or isinstance(nan_skips, bool) or nan_skips < 0:
        raise CheckpointError(f"checkpoint file {path} is corrupt: nan_skips={nan_skips!r}, not a count >= 0")
    return state


def _read_adapter(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))  # safetensors: tensors only, nothing executed
    except Exception as error:  # safetensors raises its own error types for truncated or corrupt files
        raise CheckpointError(f"checkpoint file {path} is unreadable: {error}") from error


def _read_optimizer(path: Path) -> tuple[dict, torch.Tensor]:
    try:
        payload = torch.load(path, weights_only=True)  # refuses pickled code, only tensors and containers
    except Exception as error:
        raise CheckpointError(f"checkpoint file {path} is unreadable: {error}") from error
    optimizer = payload.get("optimizer") if isinstance(payload, dict) else None
    torch_rng = payload.get("torch_rng") if isinstance(payload, dict) else None
    if (
        not isinstance(optimizer, dict)
        or not {"state", "param_groups"} <= set(optimizer)
        or not isinstance(torch_rng, torch.Tensor)
        or torch_rng.dtype != torch.uint8
    ):
        raise CheckpointError(
            f"checkpoint file {path} is corrupt: expected an optimizer state_dict and a "
            "uint8 RNG state under 'optimizer' and 'torch_rng'"
        )
    return optimizer, torch_rng


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
