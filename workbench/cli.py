"""The ``workbench`` command: train, eval, report, compare, sweep, options, build-tiny.

workbench train --preset quick --method grpo --steps 30 --out runs/demo --set learning_rate=1e-3
workbench train --method eepo --set method_options.gate=always --out runs/eepo
workbench options --method eepo
workbench eval runs/demo --split test --n-samples 16
workbench report runs/demo
workbench compare --methods grpo,eepo,erpo --seeds 3 --steps 100 --out runs/study [--backend ray]
workbench sweep --set method=eepo --space learning_rate=loguniform:1e-4:1e-2 --samples 4 --out runs/sweep
workbench report runs/study
workbench build-tiny
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from workbench import methods
from workbench.cli_commands import (
    cmd_build_tiny,
    cmd_compare,
    cmd_eval,
    cmd_options,
    cmd_report,
    cmd_sweep,
    cmd_train,
)
from workbench.cli_values import OneLineParser, at_least_one, one_line
from workbench.export_command import add_arguments as export_arguments
from workbench.export_command import cmd_export
from workbench.imports.command import add_arguments as import_arguments
from workbench.imports.command import cmd_import


def _ray_args(sp) -> None:
    sp.add_argument(
        "--address",
        help="a running Ray cluster (e.g. ray://head:10001; default: a local Ray started "
        "for this command on every core)",
    )
    sp.add_argument(
        "--gpus-per-run",
        type=float,
        default=0.0,
        metavar="N",
        help="GPUs each run reserves (e.g. 1, or 0.5 to pack two runs on a GPU); CPUs: the runs' "
        "threads (--set threads=N, default 1)",
    )


def _config_args(sp) -> None:
    """The options that build a RunConfig: --preset, --config, --model, --task, --method, --set."""
    from workbench.config import OPTIONS

    sp.add_argument("--preset", default="default", help="a named preset (see workbench.PRESETS)")
    sp.add_argument("--config", help="a YAML RunConfig file")
    for name in ("model", "task", "method"):
        option = OPTIONS[name]
        sp.add_argument(f"--{name}", help=f"{option.help} (default {option.default}; {option.allowed()})")
    sp.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a RunConfig field, or one method option as method_options.KEY=VALUE "
        "(`workbench options` lists them all)",
    )


def _compare_parser(sub) -> None:
    from workbench.studies.study import BACKENDS

    c = sub.add_parser("compare", help="every method against GRPO over several seeds, one budget (resumable)")
    c.add_argument("--methods", default=",".join(methods.STUDIED))
    c.add_argument("--seeds", type=at_least_one, default=3, help="number of seeds (0, 1, ...)")
    c.add_argument("--steps", type=at_least_one, default=100)
    c.add_argument("--out", required=True, help="study directory (run again with the same plan to resume)")
    c.add_argument(
        "--eval-prompts",
        type=at_least_one,
        default=32,
        help="evaluation prompts drawn per split (a repeated question is evaluated once)",
    )
    c.add_argument("--eval-samples", type=at_least_one, default=64, help="samples per prompt: pass@k up to this k")
    c.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a RunConfig field for every run (`workbench options` lists them)",
    )
    c.add_argument(
        "--backend",
        choices=BACKENDS,
        default="serial",
        help="serial: one run after another here; ray: each run a Ray task (the [ray] extra)",
    )
    _ray_args(c)
    c.set_defaults(func=cmd_compare)


def _sweep_parser(sub) -> None:
    from workbench.options import of_dataclass
    from workbench.studies import sweep

    s = sub.add_parser(
        "sweep",
        help="a search over settings on Ray Tune, each trial a run directory (the [ray] extra)",
        description=sweep.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument(
        "--space",
        action="append",
        default=[],
        required=True,
        metavar="KEY=KIND:VALUES",
        help="a searched setting: grid:a,b | choice:a,b | uniform:lo:hi | loguniform:lo:hi | randint:lo:hi",
    )
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a RunConfig field for every trial, e.g. method=eepo (`workbench options` lists them)",
    )
    for name, option in of_dataclass(sweep.SweepPlan).items():
        kind = {"int": int, "float": float}.get(option.kind, str)
        s.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=kind,
            default=option.default,
            choices=option.choices or None,
            help=f"{option.help} (default {option.default})",
        )
    s.add_argument("--out", required=True, help="sweep directory (run again with the same plan to resume)")
    _ray_args(s)
    s.set_defaults(func=cmd_sweep)


def _export_parser(sub) -> None:
    x = sub.add_parser("export", help="a run's rollouts as a datasets dataset, its adapter in PEFT's format")
    export_arguments(x)
    x.set_defaults(func=cmd_export)


def _import_parser(sub) -> None:
    i = sub.add_parser("import", help="a run trained elsewhere (TRL, verl, a JSONL/parquet file) as a run directory")
    import_arguments(i)
    i.set_defaults(func=cmd_import)


def parser() -> argparse.ArgumentParser:
    from workbench.config import OPTIONS

    p = OneLineParser(prog="workbench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    t = sub.add_parser("train", help="train and write a run directory")
    _config_args(t)
    t.add_argument("--steps", type=at_least_one, default=60, help="train until this many steps (with --resume: in all)")
    t.add_argument("--out", default="runs/latest")
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint; --set "
        "may change the fields that can change mid-run (recorded in its config.yaml)",
    )
    t.add_argument("--eval", action="store_true", help="evaluate pass@k on the test split before and after (eval.json)")
    t.add_argument(
        "--backend",
        choices=("workbench", "trl"),
        default="workbench",
        help="trl: TRL's GRPOTrainer runs the method (also under accelerate launch; the [scale] extra)",
    )
    t.add_argument(
        "--trl",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a further trl.GRPOConfig field for --backend trl, e.g. --trl use_vllm=true",
    )
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="pass@k, entropy and diversity on a split")
    e.add_argument("run_dir", nargs="?", help="a run directory (its last checkpoint); omit to evaluate the base model")
    _config_args(e)
    e.add_argument("--split", default="test", choices=("train", "test", "ood"))
    e.add_argument("--k", default=None, help="comma-separated k values (default: 1, 2, 4, ... up to --n-samples)")
    e.add_argument("--n-samples", type=at_least_one, default=16)
    e.add_argument("--num-prompts", type=at_least_one, default=64, help="prompts drawn (a repeat is evaluated once)")
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser("report", help="a self-contained HTML report of one run or a comparison of several")
    r.add_argument("run_dirs", nargs="+")
    r.add_argument("--out")
    r.set_defaults(func=cmd_report)

    for add_parser in (_compare_parser, _sweep_parser, _export_parser, _import_parser):
        add_parser(sub)

    o = sub.add_parser("options", help="every RunConfig field, or one method's options: default, allowed values, help")
    o.add_argument("--method", choices=sorted(OPTIONS["method"].choices), help="that method's method_options instead")
    o.add_argument("--markdown", action="store_true", help="all of them as the markdown tables of docs/methods.md")
    o.set_defaults(func=cmd_options)

    b = sub.add_parser("build-tiny", help="pretrain the embedded model (deterministic, about 20 minutes on 2 cores)")
    b.add_argument("--out", help="where to write it (default: the package's checkpoint directory)")
    b.add_argument("--steps", type=at_least_one, help="training steps (default: the shipped model's)")
    b.set_defaults(func=cmd_build_tiny)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run a command. Every error is one line starting ``workbench:`` with exit code 2 (the
    traceback with ``--debug``); Ctrl-C or a SIGTERM stop a run after saving it (exit code 130)."""
    args = parser().parse_args(argv)
    # SIGINT too: a shell starts background jobs (`workbench train ... &`, CI) with it ignored
    stops = (signal.SIGTERM, signal.SIGINT) if threading.current_thread() is threading.main_thread() else ()
    previous = {signum: signal.signal(signum, _interrupt) for signum in stops}
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":  # under accelerate launch, one line from the main process
            print(f"workbench: interrupted{_where_it_resumes(args)}", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            raise
        print(f"workbench: {one_line(error)}", file=sys.stderr)
        return 2
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _where_it_resumes(args) -> str:
    """What a stopped ``train`` left, read from its run directory: the step its last checkpoint holds."""
    if args.command != "train":
        return ""
    from workbench.run.store import RunStore

    steps = RunStore(args.out).checkpoint_steps()
    if not steps:
        return f"; {args.out} holds no checkpoint: start it again"
    backend = " --backend trl" if args.backend == "trl" else ""
    return (
        f"; the run in {args.out} is saved at step {steps[-1]}: continue it with "
        f"workbench train --resume{backend} --out {args.out}"
    )


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # a SIGTERM stops a run as Ctrl-C does: it saves itself first


if __name__ == "__main__":
    raise SystemExit(main())
