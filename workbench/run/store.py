"""The run directory: what a run leaves on disk, written so that nothing is lost.

```
RUN_DIR/config.yaml              the RunConfig
RUN_DIR/metrics.jsonl            one JSON object per step, appended and flushed every step
RUN_DIR/rollouts/step-N.parquet  every response of step N with its token telemetry
RUN_DIR/checkpoints/step-N/      adapter.safetensors, optimizer.pt, state.json (digests of every file),
                                 and the engine's own checkpoint where it has one (trl/)
RUN_DIR/backend.json             the engine, when not the in-process Trainer (TRL: processes, versions, fields)
RUN_DIR/eval.json                evaluations by name ("base", "final", "step-N"), merged under the OS lock
                                 of .eval.json.lock (run/files.py), never replaced
RUN_DIR/.lock                    held (flock) by the one process that writes the run; who, as JSON
                                 (run_lock.py)
RUN_DIR/metrics.jsonl.corrupt    damaged metrics lines a resume set aside, with their line numbers
```

One writer: a trainer takes the run's lock before it writes anything, and a second writer
(another train, a resume, a compare) is refused with the holder's pid and host. Readers (eval,
report, widgets) never take it and never write into the run's files.

Checkpoints are written to a temporary directory and renamed into place, so a process
killed mid-write leaves the previous checkpoint intact; what they hold and how it is checked
on load is :mod:`workbench.run.checkpoint`. A metrics line that fails to write is cut off again, so the file never holds
half a step. A damaged line (a crash mid-write, an editor, a stray byte) is reported with its
line number and skipped, never taken as the end of the data: every reader sees the same rows.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import warnings
from pathlib import Path

import pandas as pd
import torch

from workbench.config import RunConfig
from workbench.metrics.registry import current_names
from workbench.run.checkpoint import Checkpoint, CheckpointError, read_checkpoint, write_checkpoint
from workbench.run.files import atomic_write_text, fsync, update_json
from workbench.run.lock import LOCK_NAME, RunLock, RunLockedError  # noqa: F401 (RunLockedError: also read from here)

BACKEND_FILE = "backend.json"


class DamagedMetricsWarning(UserWarning):
    """metrics.jsonl holds lines that are not a step's metrics; they were skipped."""


class RunStore:
    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.metrics_path = self.dir / "metrics.jsonl"
        self.rollouts_dir = self.dir / "rollouts"
        self.checkpoints_dir = self.dir / "checkpoints"
        self.damaged_lines: list[tuple[int, str]] = []  # (line number, text) of the last read_metrics
        self._lock = RunLock(self.dir)

    # --- one writer ---------------------------------------------------------------
    def lock(self) -> None:
        """Take the run's writer lock (``run_lock.RunLock``: an OS lock, released when this process
        ends or on ``unlock``). Raises RunLockedError naming the holder when another writer has it."""
        if self._lock.held:
            return
        self._made_dir = not self.dir.exists()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()

    def unlock(self) -> None:
        """Let go of the writer lock; a directory ``lock`` created that holds no run is removed again."""
        if not self._lock.held:
            return
        self._lock.release()
        if self._made_dir and not self.holds_run() and {p.name for p in self.dir.iterdir()} <= {LOCK_NAME}:
            shutil.rmtree(self.dir, ignore_errors=True)

    def holds_run(self) -> bool:
        """Whether a run has written here already (its config, metrics or checkpoints)."""
        return (self.dir / "config.yaml").exists() or self.metrics_path.exists() or bool(self.checkpoint_steps())

    def create(self, cfg: RunConfig) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rollouts_dir.mkdir(exist_ok=True)
        self.checkpoints_dir.mkdir(exist_ok=True)
        atomic_write_text(self.dir / "config.yaml", cfg.to_yaml())

    def write_config(self, cfg: RunConfig) -> None:
        atomic_write_text(self.dir / "config.yaml", cfg.to_yaml())

    def write_backend(self, info: dict) -> None:
        """backend.json: the engine that trains a run not trained in process (TRL: its processes,
        versions and the GRPOConfig fields the user set), so that nothing about a run is lost."""
        atomic_write_text(self.dir / BACKEND_FILE, json.dumps(info, indent=1, default=str) + "\n")

    def backend(self) -> dict | None:
        path = self.dir / BACKEND_FILE
        return json.loads(path.read_text()) if path.exists() else None

    def config(self) -> RunConfig:
        path = self.dir / "config.yaml"
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: is {self.dir} a run directory?")
        return RunConfig.from_yaml(path)

    # --- metrics ------------------------------------------------------------------
    def append_metrics(self, metrics: dict) -> None:
        data = (json.dumps({k: _jsonable(v) for k, v in metrics.items()}) + "\n").encode()
        # unbuffered, so nothing is left in a buffer to be flushed after a failed write
        fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except BaseException:  # disk full, interrupted: take the partial line back out
                os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)

    def read_metrics(self) -> list[dict]:
        """One row per step in step order (of a step written twice, the later row). Damaged lines
        are skipped with a DamagedMetricsWarning naming them, and kept in ``damaged_lines``."""
        if not self.metrics_path.exists():
            self.damaged_lines = []
            return []
        by_step, self.damaged_lines = parse_metrics(self.metrics_path.read_bytes())
        if self.damaged_lines:
            numbers = ", ".join(str(n) for n, _ in self.damaged_lines[:10])
            more = f" and {len(self.damaged_lines) - 10} more" if len(self.damaged_lines) > 10 else ""
            warnings.warn(
                f"{self.metrics_path}: line{'s' if len(self.damaged_lines) > 1 else ''} {numbers}{more} "
                "are not a step's metrics (damaged or cut off) and were skipped; the rows after them "
                "were read",
                DamagedMetricsWarning,
                stacklevel=2,
            )
        return [by_step[step] for step in sorted(by_step)]

    def truncate_metrics(self, last_step: int) -> list[dict]:
        """Keep the metrics of steps <= ``last_step`` (a resume replays the rest), one row per
        step. Damaged lines are set aside in metrics.jsonl.corrupt (appended, with their line
        numbers) before the file is rewritten, so nothing is lost."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DamagedMetricsWarning)
            rows = [r for r in self.read_metrics() if r["step"] <= last_step]
        if self.damaged_lines:
            kept = "".join(json.dumps({"line": n, "text": text}) + "\n" for n, text in self.damaged_lines)
            with open(self.metrics_path.with_name("metrics.jsonl.corrupt"), "a", encoding="utf-8") as aside:
                aside.write(kept)
            for warning in caught:
                warnings.warn(
                    f"{warning.message} (set aside in metrics.jsonl.corrupt)", DamagedMetricsWarning, stacklevel=2
                )
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
        return rows

    # --- evaluations ----------------------------------------------------------------
    def read_evaluations(self) -> dict:
        path = self.dir / "eval.json"
        try:
            return json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError) as error:
            raise CheckpointError(f"{path} is unreadable ({error}): move it away to write new evaluations") from error

    def add_evaluation(self, name: str, split: str, result: dict) -> Path:
        """Merge one evaluation into eval.json (atomically, under its lock: evaluations written at
        the same time by other processes are all kept, and so are earlier ones)."""
        path = self.dir / "eval.json"

        def merged(evaluations: dict) -> dict:
            evaluations.setdefault(name, {})[split] = result
            return evaluations

        update_json(path, merged, lambda _: self.read_evaluations())
        return path

    # --- rollouts -----------------------------------------------------------------
    def write_rollouts(self, step: int, frame: pd.DataFrame) -> Path:
        """Write rollouts/step-N.parquet whole: into a temporary (which ``rollout_steps`` never
        lists), then renamed into place, so a reader in another process never sees half a file."""
        path = self.rollouts_dir / f"step-{step}.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        frame.to_parquet(tmp, index=False)
        fsync(tmp)  # on disk before the name is, or a crash could leave an empty file under it
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
        """Steps with a checkpoint directory in place (temporaries start with a dot: never listed)."""
        if not self.checkpoints_dir.exists():
            return []
        names = (re.fullmatch(r"step-(\d+)", p.name) for p in self.checkpoints_dir.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in names if m)

    def save_checkpoint(
        self,
        step: int,
        policy,
        optimizer: torch.optim.Optimizer,
        state: dict,
        engine_files: dict[str, Path] | None = None,
    ) -> Path:
        """Write the checkpoint of ``step`` into a temporary directory, then rename it into place.
        ``engine_files``: directories an engine wrote for the step ({name: path}, TRL's own checkpoint),
        moved into it under ``name`` so that the step's checkpoint is one directory, digests and all."""
        final = self.checkpoints_dir / f"step-{step}"
        self._remove_stale_temporaries()
        tmp = self.checkpoints_dir / f".tmp-step-{step}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, directory in (engine_files or {}).items():
            shutil.move(str(directory), tmp / name)
        write_checkpoint(tmp, step, policy, optimizer, state)
        for f in tmp.rglob("*"):
            fsync(f)
        fsync(tmp)
        _replace_directory(tmp, final)
        fsync(self.checkpoints_dir)
        return final

    def _remove_stale_temporaries(self) -> None:
        """Delete the temporaries of writers that died mid-save (their pid is gone)."""
        for path in self.checkpoints_dir.glob(".*-step-*-*"):
            pid = path.name.rsplit("-", 1)[1]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)

    def load_checkpoint(self, step: int | None = None) -> Checkpoint:
        """Read and check a checkpoint, by default the latest; nothing on disk changes.

        Raises CheckpointError naming the file when one is missing, truncated or corrupt."""
        steps = self.checkpoint_steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.checkpoints_dir}")
        step = steps[-1] if step is None else step
        path = self.checkpoints_dir / f"step-{step}"
        earlier = [s for s in steps if s < step]
        hint = (
            f" (checkpoints of earlier steps: {', '.join(map(str, earlier))}; rename it to broken-{path.name} "
            f"to resume from step {earlier[-1]})"
            if earlier
            else ""
        )
        try:
            return read_checkpoint(path, step)
        except CheckpointError as error:
            raise CheckpointError(f"{error}{hint}") from error.__cause__


def parse_metrics(data: bytes, first_line: int = 1) -> tuple[dict[int, dict], list[tuple[int, str]]]:
    """{step: row} of the lines of metrics.jsonl in ``data`` that are a step's metrics (the later
    of a step written twice), and (line number, text) of those that are not, counting lines from
    ``first_line``. Blank lines are neither."""
    by_step, damaged = {}, []
    for number, raw in enumerate(data.split(b"\n"), start=first_line):
        if not raw.strip():
            continue
        text = raw.decode("utf-8", errors="replace")
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            row = None
        if isinstance(row, dict) and isinstance(row.get("step"), int) and not isinstance(row["step"], bool):
            by_step[row["step"]] = current_names(row)
        else:
            damaged.append((number, text))
    return by_step, damaged


def _replace_directory(new: Path, final: Path) -> None:
    """Put directory ``new`` at ``final`` by renames: a replaced checkpoint is renamed away
    before it is deleted, so a crash never leaves a half-deleted directory under a step name
    (between the two renames, for microseconds, the step has no checkpoint and resume takes
    the one before)."""
    if not final.exists():
        os.replace(new, final)
        return
    old = final.with_name(f".old-{final.name}-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _jsonable(v):
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else str(v)
    return v
