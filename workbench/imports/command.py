"""``workbench import``: the command over ``import_run``."""

from __future__ import annotations

import sys

from workbench.imports.importer import FORMATS, NO_MODEL, import_run


def add_arguments(i) -> None:
    """The ``import`` subcommand's arguments (``workbench.cli`` makes the subcommand)."""
    i.add_argument("source", help="TRL's output_dir, verl's rollout_data_dir, or a .jsonl/.parquet file")
    i.add_argument("--format", required=True, choices=FORMATS, help="what SOURCE is")
    i.add_argument("--out", required=True, help="the run directory (run again with the same source to resume)")
    i.add_argument("--model", help="re-score the text with this model for token telemetry (a name or directory)")
    i.add_argument("--adapter", help="with --model: a workbench checkpoint or a PEFT adapter directory")
    i.add_argument(
        "--metrics-log", help="verl: its file-logger JSONL or a saved console log (default: found in SOURCE)"
    )
    i.add_argument("--temperature", type=float, default=1.0, help="the sampling temperature the entropy is taken at")
    i.add_argument(
        "--max-completion-length",
        type=int,
        help="with --model: the run's length limit; a shorter response ended at EOS, which is restored and scored",
    )
    i.add_argument("--device", default="auto", help="where --model runs (auto, cpu, cuda, cuda:N)")


def cmd_import(args) -> int:
    out = import_run(
        args.source,
        args.format,
        args.out,
        model=args.model,
        adapter=args.adapter,
        metrics_log=args.metrics_log,
        temperature=args.temperature,
        max_completion_length=args.max_completion_length,
        device=args.device,
    )
    print(out)
    if not args.model:
        print(f"workbench: note: {NO_MODEL}", file=sys.stderr)
    return 0
