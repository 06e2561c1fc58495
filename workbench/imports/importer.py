"""``import_run``: a run trained elsewhere (TRL's logs, verl's dumps, a generic file) written as a
normal run directory, re-scored by a model for per-token telemetry when one is given.

The run directory's engine is ``import`` (backend.json: the format, the source, what re-scored it and
the reader's notes), so ``workbench train --resume`` refuses it by name. Each step is recorded as soon
as it is done; the same import run again skips the steps already recorded (an import stopped midway
continues, a source still being written gains its new steps), and another source or model is refused.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from workbench.config import RunConfig
from workbench.imports import jsonl, steps, trl, verl
from workbench.imports.rescore import Rescorer
from workbench.imports.source import Imported, ImportFormatError
from workbench.options import ConfigError
from workbench.run.store import RunStore
from workbench.run.writer import RunWriter

ENGINE = "import"
FORMATS = ("trl", "verl", "jsonl")
NO_MODEL = "token telemetry (entropy, log-probs, top-5, pivots) needs a model: import into a new directory with --model"


def import_run(
    source: str | Path,
    format: str,
    out: str | Path,
    model: str | None = None,
    adapter: str | Path | None = None,
    metrics_log: str | Path | None = None,
    temperature: float = 1.0,
    max_completion_length: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> Path:
    """Import ``source`` (``format``: trl, verl or jsonl) into the run directory ``out``, re-scored by
    ``model`` (and ``adapter``) at ``temperature`` when given, the EOS of responses shorter than
    ``max_completion_length`` restored (``rescore``); returns ``out``."""
    if adapter is not None and model is None:
        raise ConfigError("adapter", str(adapter), "an adapter of the re-scoring model: give model (--model) too")
    imported = read(source, format, metrics_log)
    rescoring = {
        "model": model,
        "adapter": str(Path(adapter).resolve()) if adapter else None,
        "temperature": temperature,
        "max_completion_length": max_completion_length,
    }
    cfg = _config(imported, model, temperature, max_completion_length)  # may add a note
    info = {
        "backend": ENGINE,
        "format": format,
        "source": str(imported.source.resolve()),
        "rescored_with": rescoring if model else None,
        "notes": imported.notes + ([] if model else [NO_MODEL]),
    }
    continued = _continues(RunStore(out), info)  # before the model loads: a refusal is quick
    rescorer = Rescorer(model, adapter, temperature, max_completion_length, device) if model else None
    writer = RunWriter.reopen(out, engine=ENGINE) if continued else RunWriter.claim(out)
    try:
        if not continued:
            writer.start(cfg, backend=info)
        done = {int(row["step"]) for row in writer.store.read_metrics()}
        todo = [s for s in imported.steps() if s not in done]
        total = sum(len(imported.rows[s]) for s in todo if s in imported.rows)
        with tqdm(total=total, unit="row", desc=f"import {format}", disable=not progress) as bar:
            for step in todo:
                _record(writer, imported, step, rescorer, writer.store.config(), bar.update)
                if rescorer is None:
                    bar.update(len(imported.rows.get(step, ())))
    finally:
        writer.close()
    return Path(out)


def read(source: str | Path, format: str, metrics_log: str | Path | None = None) -> Imported:
    """The source in the common form (``source.Imported``), read by its format's reader."""
    if format not in FORMATS:
        raise ConfigError("format", format, f"one of {', '.join(FORMATS)}")
    path = Path(source)
    if not path.exists():
        raise ImportFormatError(f"{path} does not exist")
    if metrics_log is not None and format != "verl":
        raise ConfigError("metrics_log", str(metrics_log), "a verl metrics log, with --format verl only")
    if format == "trl":
        return trl.read(path).counted_from_zero()
    if format == "verl":
        return verl.read(path, Path(metrics_log) if metrics_log else None).counted_from_zero()
    return jsonl.read(path)  # its steps as the file numbers them


def _continues(store: RunStore, info: dict) -> bool:
    """Whether ``store`` holds this same import already (to continue); False when it holds no run. A run
    of another source, format or re-scoring, or not imported at all, is refused."""
    if not store.holds_run():
        return False
    recorded = store.backend() or {}
    same = {k: recorded.get(k) for k in ("backend", "format", "source", "rescored_with")}
    if same != {k: info[k] for k in same}:
        raise ConfigError(
            "out",
            str(store.dir),
            f"a new directory, or the same import continued: {store.dir} holds "
            + (
                f"the import of {recorded.get('source')} ({recorded.get('format')}, re-scored with "
                f"{recorded.get('rescored_with')})"
                if recorded.get("backend") == ENGINE
                else f"a run trained by {recorded.get('backend', 'workbench')}"
            ),
        )
    return True


def _config(imported: Imported, model: str | None, temperature: float, max_length: int | None) -> RunConfig:
    """The run's config.yaml: task ``external:LABEL``; model the one given, else the one the source
    names, else ``external:LABEL`` too; the group shape of its first step with rows, where it has one
    (groups of one response are noted: RunConfig's num_generations is 2 at least)."""
    label = imported.label or imported.format
    shape: dict[str, Any] = {"max_completion_length": max_length} if max_length else {}
    first = next((imported.rows[s] for s in sorted(imported.rows)), None)
    if first is not None:
        size = collections.Counter(first.groupby("group").size().tolist()).most_common(1)[0][0]
        shape["num_prompts"] = int(first["group"].nunique())
        if size >= 2:
            shape["num_generations"] = int(size)
        else:
            imported.notes.append("one response a group: config.yaml's num_generations is its default")
    return RunConfig(
        model=model or imported.model or f"external:{label}",
        task=f"external:{label}",
        temperature=temperature,
        **shape,
    )


def _record(
    writer: RunWriter,
    imported: Imported,
    step: int,
    rescorer: Rescorer | None,
    cfg: RunConfig,
    done: Callable[[int], object],
) -> None:
    """Record one step: its rollouts (when the source has rows for it) and its metrics row; ``done(n)``
    as each batch of n rows is re-scored."""
    source = imported.metrics.get(step, {})
    rows = imported.rows.get(step)
    if rows is None:
        writer.record(step, None, {**source, "step": step})
        return
    scored = rescorer.score(rows, done=done) if rescorer else None
    batch = steps.step_batch(rows, scored, cfg)
    frame = steps.step_frame(batch, rows, step, rescorer.tokenizer if rescorer else None)
    writer.record(step, frame, steps.step_row(step, batch, source, rescorer is not None))
