"""The run directory: what a run leaves on disk, written so that nothing is lost.

```
RUN_DIR/config.yaml              the RunConfig
RUN_DIR/metrics.jsonl            one JSON object per step, appended and flushed every step
RUN_DIR/rollouts/step-N.parquet  every response of step N with its token telemetry
RUN_DIR/checkpoints/step-N/      adapter.safetensors, optimizer.pt, state.json
```

Checkpoints are written to a temporary directory and renamed into place, so a process
killed mid-write leaves the previous checkpoint intact. Optimizer and RNG state load with
``torch.load(weights_only=True)``; weights only from safetensors.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pandas as pd
import torch

from .config import RunConfig

CHECKPOINT_FILES = ("adapter.safetensors", "optimizer.pt", "state.json")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated or corrupt; the message names the file."""


class RunStore:
    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.metrics_path = self.dir / "metrics.jsonl"
        self.rollouts_dir = self.dir / "rollouts"
        self.checkpoints_dir = self.dir / "checkpoints"

    def create(self, cfg: RunConfig) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rollouts_dir.mkdir(exist_ok=True)
        self.checkpoints_dir.mkdir(exist_ok=True)
        _atomic_write_text(self.dir / "config.yaml", cfg.to_yaml())

    def write_config(self, cfg: RunConfig) -> None:
        _atomic_write_text(self.dir / "config.yaml", cfg.to_yaml())

    def config(self) -> RunConfig:
        path = self.dir / "config.yaml"
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: is {self.dir} a run directory?")
        return RunConfig.from_yaml(path)

    # --- metrics ------------------------------------------------------------------
    def append_metrics(self, metrics: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps({k: _jsonable(v) for k, v in metrics.items()}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a crash: everything after it is not trusted
        return rows

    def truncate_metrics(self, last_step: int) -> list[dict]:
        """Keep the metrics of steps <= ``last_step`` (a resume replays the rest)."""
        rows = [r for r in self.read_metrics() if r.get("step", -1) <= last_step]
        _atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
        return rows

    # --- rollouts -----------------------------------------------------------------
    def write_rollouts(self, step: int, frame: pd.DataFrame) -> Path:
        path = self.rollouts_dir / f"step-{step}.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        return path

    def rollout_steps(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.rollouts_dir.glob("step-*.parquet"))

    def read_rollouts(self, step: int | None = None) -> pd.DataFrame:
        steps = self.rollout_steps()
        if not steps:
            raise FileNotFoundError(f"no rollouts in {self.rollouts_dir}")
        return pd.read_parquet(self.rollouts_dir / f"step-{steps[-1] if step is None else step}.parquet")

    # --- checkpoints --------------------------------------------------------------
    def checkpoint_steps(self) -> list[int]:
        if not self.checkpoints_dir.exists():
            return []
        return sorted(
            int(p.name.split("-")[1]) for p in self.checkpoints_dir.glob("step-*") if p.name.split("-")[1].isdigit()
        )

    def save_checkpoint(self, step: int, policy, optimizer: torch.optim.Optimizer, state: dict) -> Path:
        final = self.checkpoints_dir / f"step-{step}"
        tmp = self.checkpoints_dir / f".tmp-step-{step}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        policy.save_adapter(tmp / "adapter.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}))
        for f in tmp.iterdir():
            _fsync(f)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(self.checkpoints_dir)
        return final

    def load_checkpoint(self, step: int | None = None) -> tuple[Path, dict, dict]:
        """(directory, optimizer payload, state) of a checkpoint, by default the latest."""
        steps = self.checkpoint_steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.checkpoints_dir}")
        path = self.checkpoints_dir / f"step-{steps[-1] if step is None else step}"
        for name in CHECKPOINT_FILES:
            if not (path / name).exists():
                raise CheckpointError(f"checkpoint file {path / name} is missing")
        try:
            payload = torch.load(path / "optimizer.pt", weights_only=True)
        except Exception as error:
            raise CheckpointError(f"checkpoint file {path / 'optimizer.pt'} is unreadable: {error}") from error
        try:
            state = json.loads((path / "state.json").read_text())
        except json.JSONDecodeError as error:
            raise CheckpointError(f"checkpoint file {path / 'state.json'} is unreadable: {error}") from error
        return path, payload, state


def _jsonable(v):
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else str(v)
    return v


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    _fsync(tmp)
    os.replace(tmp, path)
