"""The ``workbench`` subcommands' implementations: ``cmd_train``, ``cmd_eval``, ``cmd_report``,
``cmd_compare``, ``cmd_sweep``, ``cmd_options`` and ``cmd_build_tiny``, each taking the parsed
arguments (``workbench.cli`` builds the parsers and dispatches to them) and returning an exit code."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from workbench.cli_values import UsageError, overrides
from workbench.integrations import MissingExtraError


def _requested(args) -> dict:
    """The RunConfig fields the command line names (--config file, --preset, --set, --model,
    --task, --method), without the defaults: what a --resume is asked to change. Over a config
    file the others are changes as ``RunConfig.replace`` makes them (``method_options.X`` sets
    one option; another method brings its own settings)."""
    from workbench.config import PRESETS, ConfigError, RunConfig

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
    from workbench.config import RunConfig

    return RunConfig.from_dict(_requested(args))


def cmd_options(args) -> int:
    """Every RunConfig field (or one method's options) with its default, what it allows and its help."""
    from workbench import methods
    from workbench.config import OPTIONS, options_markdown

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
    from workbench.engine.trainer import Trainer
    from workbench.run.store import RunStore

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
                    print(
                        f"{name:>5} test: "
                        + ", ".join(f"{k} {v:.3f}" for k, v in result["test"].items() if k.startswith("pass@"))
                    )
    finally:
        trainer.close()
    if trainer.records:
        last = trainer.records[-1]
        print(
            f"run {out}: {trainer.step_index} steps, reward {last['reward_mean']:.3f}, "
            f"entropy {last['entropy_mean']:.3f} nats"
        )
    return 0


def _train_on_trl(args, out: Path) -> int:
    """``train --backend trl``: TRL's GRPOTrainer runs the method (alone or under accelerate launch)."""
    from workbench.run.store import RunStore
    from workbench.run.writer import resume_changes

    try:
        from workbench.integrations.trl import WorkbenchGRPOTrainer
    except ImportError as error:
        raise UsageError(
            f"--backend trl needs TRL and accelerate ({error.name} is missing): pip install -e '.[scale]'"
        ) from None
    if args.eval:
        raise UsageError("--eval runs on the workbench backend; evaluate a TRL run with workbench eval")
    if args.resume:  # as it was configured: any field the command line changes is refused by name
        cfg = RunStore(out).config()
        resume_changes(cfg, _requested(args), out, ())
    else:
        cfg = _config(args)
    trainer = WorkbenchGRPOTrainer(cfg, out, steps=args.steps, resume=args.resume, **overrides(args.trl, "--trl"))
    trainer.train()
    if trainer.accelerator.is_main_process:
        rows = RunStore(out).read_metrics()
        if rows:
            processes = trainer.accelerator.num_processes
            print(
                f"run {out}: {len(rows)} steps on TRL ({processes} process{'es' if processes > 1 else ''}), "
                f"reward {rows[-1]['reward_mean']:.3f}, entropy {rows[-1]['entropy_mean']:.3f} nats"
            )
    return 0


def cmd_eval(args) -> int:
    from workbench.engine.trainer import Trainer
    from workbench.run.store import RunStore

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
    from workbench.studies.report import write_report
    from workbench.studies.study import PLAN_FILE

    if len(args.run_dirs) == 1 and (Path(args.run_dirs[0]) / PLAN_FILE).exists():
        from workbench.studies.study_report import write_study_report

        path = write_study_report(args.run_dirs[0], args.out)
    else:
        path = write_report(args.run_dirs, args.out)
    print(path)
    return 0


def cmd_compare(args) -> int:
    from workbench.studies.study import StudyPlan, run_study, summarize

    plan = StudyPlan(
        methods=[m.strip() for m in args.methods.split(",") if m.strip()],
        seeds=list(range(args.seeds)),
        steps=args.steps,
        eval_prompts=args.eval_prompts,
        eval_samples=args.eval_samples,
        overrides=overrides(args.set),
    )
    _ray_only(args, "compare")
    out = run_study(
        args.out, plan, progress=True, backend=args.backend, address=args.address, gpus_per_run=args.gpus_per_run
    )
    table = summarize(out)
    columns = [
        c
        for c in (
            "method",
            "split",
            "seeds",
            "pass@1",
            "pass@1 ci95",
            f"pass@{plan.eval_samples}",
            "entropy_mean",
            "distinct_correct_strategies",
            "gain_vs_grpo",
        )
        if c in table
    ]
    print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"workbench report {out}  # the HTML comparison page")
    return 0


def cmd_sweep(args) -> int:
    from workbench.options import of_dataclass
    from workbench.studies.sweep import SweepPlan, best_trials, read_trials

    try:
        from workbench.integrations.ray_tune import run_sweep
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
    columns = [
        c
        for c in ("name", "status", "steps", "metric", *plan.space, "pass@1", f"pass@{plan.eval_samples}")
        if c in best
    ]
    print(f"best trials by {plan.metric} ({plan.mode}; finished first):")
    print(
        best[columns].rename(columns={"metric": plan.metric}).to_string(index=False, float_format=lambda v: f"{v:.4g}")
    )
    print(f"every trial: {out / 'trials.json'}; watch it with widgets.SweepView({str(out)!r})")
    trials = read_trials(out)
    if (trials.status == "interrupted").any():  # Tune took the Ctrl-C and saved the experiment
        print(
            f"workbench: interrupted; the sweep in {out} is saved: run the same command again to resume it",
            file=sys.stderr,
        )
        return 130
    failed = trials[trials.status == "failed"]
    if len(failed):  # the others are done: their table is above; the failures are named, and the exit code says so
        first = failed.iloc[0]
        print(
            f"workbench: {len(failed)} of {len(trials)} trials failed (errors in {out / 'trials.json'}); "
            f"{first['name']}: {first['error']}",
            file=sys.stderr,
        )
        return 2
    return 0


def _ray_only(args, command: str) -> None:
    if args.backend != "ray" and (args.address is not None or args.gpus_per_run):
        flag = "--address" if args.address is not None else "--gpus-per-run"
        raise UsageError(f"{command} {flag} is for --backend ray")


def cmd_build_tiny(args) -> int:
    from workbench.models.tiny.build import BuildConfig, build

    cfg = BuildConfig(steps=args.steps) if args.steps is not None else BuildConfig()
    build(args.out, cfg) if args.out else build(cfg=cfg)
    return 0
