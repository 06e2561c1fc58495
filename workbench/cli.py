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
import json
import signal
import sys
import threading
from pathlib import Path

from .cli_values import OneLineParser, UsageError, at_least_one, one_line, overrides
from .integrations import MissingExtraError


def _requested(args) -> dict:
    """The RunConfig fields the command line names (--config file, --preset, --set, --model,
    --task, --method), without the defaults: what a --resume is asked to change. Over a config
    file the others are changes as ``RunConfig.replace`` makes them (``method_options.X`` sets
    one option; another method brings its own settings)."""
    from .config import PRESETS, ConfigError, RunConfig

    if args.preset not in PRESETS:
        raise ConfigError("preset", args.preset, f"one of {', '.join(sorted(PRESETS))}")
    changes = overrides(args.set)
    for name in ("model", "task", "method"):
        if getattr(args, name):
            changes[name] = getattr(args, name)
    if args.config:
        return RunConfig.from_yaml(args.config).replace(**changes).to_dict()
    return {**PRESETS[args.preset], **changes}


def _config(args):
    from .config import RunConfig

    return RunConfig.from_dict(_requested(args))


def cmd_options(args) -> int:
    """Every RunConfig field (or one method's options) with its default, what it allows and its help."""
    from . import methods
    from .config import OPTIONS, options_markdown

    if args.markdown:
        print(options_markdown(), end="")
        return 0
    declared = methods.get(args.method).OPTIONS if args.method else OPTIONS
    prefix = "method_options." if args.method else ""
    if args.method and not declared:
        print(f"method {args.method!r} has no options of its own")
    for key, option in declared.items():
        print(f"{prefix}{key} = {option.default!r}\n    {option.help}\n    allowed: {option.allowed()}")
    return 0


def cmd_train(args) -> int:
    from .store import RunStore
    from .trainer import Trainer

    out = Path(args.out)
    if args.backend == "trl":
        return _train_on_trl(args, out)
    if args.trl:
        raise UsageError("--trl FIELD=VALUE sets TRL's GRPOConfig: it needs --backend trl")
    if args.resume:
        trainer = Trainer.resume(out, **_requested(args))  # live fields applied, the rest refused
    else:
        trainer = Trainer(_config(args), out_dir=out)  # refuses a directory that holds a run
    store = RunStore(out)
    try:
        if args.eval and trainer.step_index == 0 and "base" not in store.read_evaluations():
            store.add_evaluation("base", "test", trainer.evaluate("test", progress=True))
        trainer.run(max(0, args.steps - trainer.step_index) if args.resume else args.steps, progress=True)
        if args.eval:
            store.add_evaluation("final", "test", trainer.evaluate("test", progress=True))
            for name, result in store.read_evaluations().items():
                if "test" in result:
                    print(f"{name:>5} test: " + ", ".join(f"{k} {v:.3f}" for k, v in result["test"].items()
                                                          if k.startswith("pass@")))
    finally:
        trainer.close()
    if trainer.records:
        last = trainer.records[-1]
        print(f"run {out}: {trainer.step_index} steps, reward {last['reward_mean']:.3f}, "
              f"entropy {last['entropy_mean']:.3f} nats")
    return 0


def _train_on_trl(args, out: Path) -> int:
    """``train --backend trl``: TRL's GRPOTrainer runs the method (alone or under accelerate launch)."""
    from .config import ConfigError
    from .store import RunStore

    try:
        from .integrations.trl import WorkbenchGRPOTrainer
    except ImportError as error:
        raise UsageError(f"--backend trl needs TRL and accelerate ({error.name} is missing): "
                         "pip install -e '.[scale]'") from None
    if args.eval:
        raise UsageError("--eval runs on the workbench backend; evaluate a TRL run with workbench eval")
    cfg = _config(args)
    if args.resume:
        recorded = RunStore(out).config()
        changed = sorted(k for k, v in cfg.to_dict().items() if v != getattr(recorded, k) and k in _requested_names(args))
        if changed:
            raise ConfigError(changed[0], getattr(cfg, changed[0]), f"the value in {out / 'config.yaml'} "
                              f"({getattr(recorded, changed[0])!r}): a TRL run resumes as it was configured")
        cfg = recorded
    trainer = WorkbenchGRPOTrainer(cfg, out, steps=args.steps, resume=args.resume, **overrides(args.trl, "--trl"))
    trainer.train()
    if trainer.accelerator.is_main_process:
        rows = RunStore(out).read_metrics()
        if rows:
            processes = trainer.accelerator.num_processes
            print(f"run {out}: {len(rows)} steps on TRL ({processes} process{'es' if processes > 1 else ''}), "
                  f"reward {rows[-1]['reward_mean']:.3f}, entropy {rows[-1]['entropy_mean']:.3f} nats")
    return 0


def _requested_names(args) -> set[str]:
    """The RunConfig fields the command line itself names (--set, --model, --task, --method)."""
    return set(overrides(args.set)) | {name for name in ("model", "task", "method") if getattr(args, name)}


def cmd_eval(args) -> int:
    from .store import RunStore
    from .trainer import Trainer

    ks = _ks(args.k)
    if ks and not all(1 <= k <= args.n_samples for k in ks):  # before a model is loaded
        raise UsageError(f"--k {args.k}: each k from 1 to --n-samples ({args.n_samples}); sample more for a larger k")
    if args.run_dir:  # the last checkpoint, read only: a live or read-only run is never written to
        trainer = Trainer.resume(args.run_dir, read_only=True)
    else:
        trainer = Trainer(_config(args))
    result = trainer.evaluate(args.split, k=ks, n_samples=args.n_samples, num_prompts=args.num_prompts, progress=True)
    print(json.dumps(result, indent=2))
    if args.run_dir:
        try:
            path = RunStore(args.run_dir).add_evaluation(f"step-{trainer.step_index}", args.split, result)
            print(f"added to {path} as step-{trainer.step_index}", file=sys.stderr)
        except OSError as error:
            print(f"workbench: note: the result was not saved in the run ({error.strerror or error})", file=sys.stderr)
    return 0


def _ks(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(k) for k in text.split(","))
    except ValueError:
        raise UsageError(f"--k {text!r}: expected comma-separated integers, e.g. --k 1,4,16") from None


def cmd_report(args) -> int:
    from .report import write_report
    from .study import PLAN_FILE

    if len(args.run_dirs) == 1 and (Path(args.run_dirs[0]) / PLAN_FILE).exists():
        from .study_report import write_study_report

        path = write_study_report(args.run_dirs[0], args.out)
    else:
        path = write_report(args.run_dirs, args.out)
    print(path)
    return 0


def cmd_compare(args) -> int:
    from .study import StudyPlan, run_study, summarize

    plan = StudyPlan(
        methods=[m.strip() for m in args.methods.split(",") if m.strip()],
        seeds=list(range(args.seeds)),
        steps=args.steps,
        eval_prompts=args.eval_prompts,
        eval_samples=args.eval_samples,
        overrides=overrides(args.set),
    )
    _ray_only(args, "compare")
    out = run_study(args.out, plan, progress=True, backend=args.backend, address=args.address,
                    gpus_per_run=args.gpus_per_run)
    table = summarize(out)
    columns = [c for c in ("method", "split", "seeds", "pass@1", "pass@1 ci95", f"pass@{plan.eval_samples}",
                           "entropy_mean", "distinct_correct_strategies", "gain_vs_grpo") if c in table]
    print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"workbench report {out}  # the HTML comparison page")
    return 0


def cmd_sweep(args) -> int:
    from .options import of_dataclass
    from .sweep import SweepPlan, best_trials, read_trials

    try:
        from .integrations.ray_tune import run_sweep
    except MissingExtraError as error:
        raise UsageError(str(error)) from None

    space = {}
    for pair in args.space:
        key, sep, spec = pair.partition("=")
        if not sep or not key or not spec:
            raise UsageError(f"--space {pair!r}: expected KEY=KIND:VALUES, e.g. --space learning_rate=grid:1e-3,1e-2")
        space[key] = spec
    fields = {name: getattr(args, name) for name in of_dataclass(SweepPlan)}
    plan = SweepPlan(space=space, overrides=overrides(args.set), **fields)
    print(f"{plan.trials} trials of {plan.steps} steps on Ray ({plan.scheduler}, metric {plan.metric}, {plan.mode})")
    out = run_sweep(args.out, plan, progress=True, address=args.address, gpus_per_run=args.gpus_per_run)
    best = best_trials(out)
    best["steps"] = [f"{int(step) + 1}/{plan.steps}" for step in best.step]  # steps trained, of the plan's
    columns = [c for c in ("name", "status", "steps", "metric", *plan.space, "pass@1", f"pass@{plan.eval_samples}")
               if c in best]
    print(f"best trials by {plan.metric} ({plan.mode}; finished first):")
    print(best[columns].rename(columns={"metric": plan.metric}).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"every trial: {out / 'trials.json'}; watch it with widgets.SweepView({str(out)!r})")
    if (read_trials(out).status == "interrupted").any():  # Tune took the Ctrl-C and saved the experiment
        print(f"workbench: interrupted; the sweep in {out} is saved: run the same command again to resume it",
              file=sys.stderr)
        return 130
    return 0


def _ray_only(args, command: str) -> None:
    if args.backend != "ray" and (args.address is not None or args.gpus_per_run):
        flag = "--address" if args.address is not None else "--gpus-per-run"
        raise UsageError(f"{command} {flag} is for --backend ray")


def _ray_args(sp) -> None:
    sp.add_argument("--address", help="a running Ray cluster (e.g. ray://head:10001; default: a local Ray started "
                    "for this command on every core)")
    sp.add_argument("--gpus-per-run", type=float, default=0.0, metavar="N",
                    help="GPUs each run reserves (e.g. 1, or 0.5 to pack two runs on a GPU); CPUs: the runs' "
                         "threads (--set threads=N, default 1)")


def cmd_build_tiny(args) -> int:
    from .tiny.build import BuildConfig, build

    cfg = BuildConfig(steps=args.steps) if args.steps is not None else BuildConfig()
    build(args.out, cfg) if args.out else build(cfg=cfg)
    return 0


def _config_args(sp) -> None:
    """The options that build a RunConfig: --preset, --config, --model, --task, --method, --set."""
    from .config import OPTIONS

    sp.add_argument("--preset", default="default", help="a named preset (see workbench.PRESETS)")
    sp.add_argument("--config", help="a YAML RunConfig file")
    for name in ("model", "task", "method"):
        option = OPTIONS[name]
        sp.add_argument(f"--{name}", help=f"{option.help} (default {option.default}; {option.allowed()})")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a RunConfig field, or one method option as method_options.KEY=VALUE "
                         "(`workbench options` lists them all)")


def _compare_parser(sub) -> None:
    from .study import BACKENDS

    c = sub.add_parser("compare", help="every method against GRPO over several seeds, one budget (resumable)")
    c.add_argument("--methods", default="grpo,entropy_bonus,clip_higher,eepo,policy_split,erpo,poly_epo")
    c.add_argument("--seeds", type=at_least_one, default=3, help="number of seeds (0, 1, ...)")
    c.add_argument("--steps", type=at_least_one, default=100)
    c.add_argument("--out", required=True, help="study directory (run again with the same plan to resume)")
    c.add_argument("--eval-prompts", type=at_least_one, default=32, help="evaluation prompts per split")
    c.add_argument("--eval-samples", type=at_least_one, default=64, help="samples per prompt: pass@k up to this k")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a RunConfig field for every run (`workbench options` lists them)")
    c.add_argument("--backend", choices=BACKENDS, default="serial",
                   help="serial: one run after another here; ray: each run a Ray task (the [ray] extra)")
    _ray_args(c)
    c.set_defaults(func=cmd_compare)


def _sweep_parser(sub) -> None:
    from . import sweep
    from .options import of_dataclass

    s = sub.add_parser("sweep", help="a search over settings on Ray Tune, each trial a run directory (the [ray] extra)",
                       description=sweep.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--space", action="append", default=[], required=True, metavar="KEY=KIND:VALUES",
                   help="a searched setting: grid:a,b | choice:a,b | uniform:lo:hi | loguniform:lo:hi | randint:lo:hi")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a RunConfig field for every trial, e.g. method=eepo (`workbench options` lists them)")
    for name, option in of_dataclass(sweep.SweepPlan).items():
        kind = {"int": int, "float": float}.get(option.kind, str)
        s.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=option.default,
                       choices=option.choices or None, help=f"{option.help} (default {option.default})")
    s.add_argument("--out", required=True, help="sweep directory (run again with the same plan to resume)")
    _ray_args(s)
    s.set_defaults(func=cmd_sweep)


def parser() -> argparse.ArgumentParser:
    from .config import OPTIONS

    p = OneLineParser(prog="workbench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    t = sub.add_parser("train", help="train and write a run directory")
    _config_args(t)
    t.add_argument("--steps", type=at_least_one, default=60, help="train until this many steps (with --resume: in all)")
    t.add_argument("--out", default="runs/latest")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint; --set "
                   "may change the fields that can change mid-run (recorded in its config.yaml)")
    t.add_argument("--eval", action="store_true", help="evaluate pass@k on the test split before and after (eval.json)")
    t.add_argument("--backend", choices=("workbench", "trl"), default="workbench",
                   help="trl: TRL's GRPOTrainer runs the method (also under accelerate launch; the [scale] extra)")
    t.add_argument("--trl", action="append", default=[], metavar="FIELD=VALUE",
                   help="a further trl.GRPOConfig field for --backend trl, e.g. --trl use_vllm=true")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="pass@k, entropy and diversity on a split")
    e.add_argument("run_dir", nargs="?", help="a run directory (its last checkpoint); omit to evaluate the base model")
    _config_args(e)
    e.add_argument("--split", default="test", choices=("train", "test", "ood"))
    e.add_argument("--k", default=None, help="comma-separated k values (default: 1, 2, 4, ... up to --n-samples)")
    e.add_argument("--n-samples", type=at_least_one, default=16)
    e.add_argument("--num-prompts", type=at_least_one, default=64)
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser("report", help="a self-contained HTML report of one run or a comparison of several")
    r.add_argument("run_dirs", nargs="+")
    r.add_argument("--out")
    r.set_defaults(func=cmd_report)

    _compare_parser(sub)
    _sweep_parser(sub)

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
        run = getattr(args, "out", None) if args.command == "train" else None
        saved = f"; the run in {run} is saved: continue it with workbench train --resume --out {run}" if run else ""
        print(f"workbench: interrupted{saved}", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            raise
        print(f"workbench: {one_line(error)}", file=sys.stderr)
        return 2
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # a SIGTERM stops a run as Ctrl-C does: it saves itself first


if __name__ == "__main__":
    raise SystemExit(main())
