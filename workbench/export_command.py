"""``workbench export RUN --rollouts DIR --adapter DIR [--step N]``: a run's rollouts as a ``datasets``
dataset and its adapter in PEFT's format (``workbench.run.export``), one line for each written."""

from __future__ import annotations

import argparse

from workbench.cli_values import UsageError, integer_at_least

_step = integer_at_least(0, "the step of one of the run's checkpoints (>= 0)")


def add_arguments(x) -> None:
    """The ``export`` subcommand's arguments (``workbench.cli`` adds the subcommand)."""
    x.add_argument("run_dir", help="a run directory")
    x.add_argument(
        "--rollouts", metavar="DIR", help="write every kept response here (datasets.load_from_disk reads it)"
    )
    x.add_argument(
        "--adapter", metavar="DIR", help="write the adapter and its model card here (PeftModel.from_pretrained)"
    )
    x.add_argument("--step", type=_step, help="the checkpoint whose adapter to export (default: the last)")


def cmd_export(args: argparse.Namespace) -> int:
    from workbench.integrations import require
    from workbench.run import export

    if not (args.rollouts or args.adapter):
        raise UsageError("export: nothing to write; give --rollouts DIR, --adapter DIR or both")
    if args.rollouts:
        require("datasets", "data", "workbench export --rollouts")
        path = export.export_rollouts(args.run_dir, args.rollouts)
        print(f"rollouts of {args.run_dir} -> {path} (datasets.load_from_disk)")
    if args.adapter:
        path = export.export_adapter(args.run_dir, args.adapter, args.step)
        print(f"adapter of {args.run_dir} -> {path} (PeftModel.from_pretrained)")
    return 0
