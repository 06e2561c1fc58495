"""Runs trained elsewhere, imported as run directories: TRL's completion logs and trainer state,
verl's rollout dumps and metrics logs, or a generic JSONL/parquet of step, prompt, completion and
reward (``workbench import SOURCE --format trl|verl|jsonl --out RUN [--model NAME --adapter DIR]``)."""

from workbench.imports.importer import FORMATS, import_run, read
from workbench.imports.source import Imported, ImportFormatError

__all__ = ["FORMATS", "Imported", "ImportFormatError", "import_run", "read"]
