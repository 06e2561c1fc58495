"""The ``workbench`` command: train, eval, report, compare, options, build-tiny.

    workbench train --preset quick --method grpo --steps 30 --out runs/demo --set learning_rate=1e-3
    workbench train --method eepo --set method_options.gate=always --out runs/eepo
    workbench options --method eepo
    workbench eval runs/demo --split test --n-samples 16
    workbench report runs/demo
    workbench compare --methods grpo,eepo,erpo --seeds 3 --steps 100 --out runs/study
    workbench report runs/study
    workbench build-tiny
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml


def _overrides(pairs: list[str]) -> dict:
    """``--set KEY=VALUE`` pairs as RunConfig fields; ``method_options.KEY=VALUE`` sets one method option."""
    values = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE, e.g. --set learning_rate=1e-3")
        key, raw = pair.split("=", 1)
        if key.startswith("method_options."):
            values.setdefault("method_options", {})[key.removeprefix("method_options.")] = _scalar(raw)
        else:
            values[key] = _scalar(raw)
    return values


def _scalar(raw: str):
    """YAML parsing, plus the numbers YAML 1.1 leaves as strings (``1e-3``)."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _config(args):
    from .config import RunConfig

    overrides = _overrides(args.set)
    for name in ("model", "task", "method"):
        if getattr(args, name):
            overrides[name] = getattr(args, name)
    base = RunConfig.from_yaml(args.config).to_dict() if args.config else {}
    if isinstance(overrides.get("method_options"), dict) and isinstance(base.get("method_options"), dict):
        overrides["method_options"] = {**base["method_options"], **overrides["method_options"]}
    if args.config:
        return RunConfig.from_dict({**base, **overrides})
    return RunConfig.preset(args.preset, **overrides)


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
    from .trainer import Trainer

    cfg = _config(args)
    out = Path(args.out)
    if (out / "config.yaml").exists() and not args.resume:
        raise SystemExit(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    trainer = Trainer.resume(out) if args.resume else Trainer(cfg, out_dir=out)
    evaluation = {}
    if args.eval and trainer.step_index == 0:
        evaluation["base"] = {"test": trainer.evaluate("test", progress=True)}
    trainer.run(args.steps - trainer.step_index if args.resume else args.steps, progress=True)
    if args.eval:
        evaluation["final"] = {"test": trainer.evaluate("test", progress=True)}
        (out / "eval.json").write_text(json.dumps(evaluation, indent=2))
        for name, result in evaluation.items():
            print(f"{name:>5} test: " + ", ".join(f"{k} {v:.3f}" for k, v in result["test"].items() if k.startswith("pass@")))
    last = trainer.history.iloc[-1]
    print(f"run {out}: {trainer.step_index} steps, reward {last['reward_mean']:.3f}, entropy {last['entropy_mean']:.3f} nats")
    return 0


def cmd_eval(args) -> int:
    from .trainer import Trainer

    if args.run_dir:
        trainer = Trainer.resume(args.run_dir)
    else:
        trainer = Trainer(_config(args))
    ks = tuple(int(k) for k in args.k.split(",")) if args.k else None
    result = trainer.evaluate(args.split, k=ks, n_samples=args.n_samples, num_prompts=args.num_prompts, progress=True)
    print(json.dumps(result, indent=2))
    return 0


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
        overrides=_overrides(args.set),
    )
    out = run_study(args.out, plan, progress=True)
    table = summarize(out)
    columns = [c for c in ("method", "split", "seeds", "pass@1", "pass@1 ci95", f"pass@{plan.eval_samples}",
                           "entropy_mean", "distinct_correct_strategies", "gain_vs_grpo") if c in table]
    print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"workbench report {out}  # the HTML comparison page")
    return 0


def cmd_build_tiny(args) -> int:
    from .tiny.build import BuildConfig, build

    cfg = BuildConfig(steps=args.steps) if args.steps else BuildConfig()
    build(args.out, cfg) if args.out else build(cfg=cfg)
    return 0


def parser() -> argparse.ArgumentParser:
    from .config import OPTIONS

    p = argparse.ArgumentParser(prog="workbench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def config_args(sp):
        sp.add_argument("--preset", default="default", help="a named preset (see workbench.PRESETS)")
        sp.add_argument("--config", help="a YAML RunConfig file")
        for name in ("model", "task", "method"):
            option = OPTIONS[name]
            sp.add_argument(f"--{name}", help=f"{option.help} (default {option.default}; {option.allowed()})")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a RunConfig field, or one method option as method_options.KEY=VALUE "
                             "(`workbench options` lists them all)")

    t = sub.add_parser("train", help="train and write a run directory")
    config_args(t)
    t.add_argument("--steps", type=int, default=60)
    t.add_argument("--out", default="runs/latest")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--eval", action="store_true", help="evaluate pass@k on the test split before and after (eval.json)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="pass@k, entropy and diversity on a split")
    e.add_argument("run_dir", nargs="?", help="a run directory (its last checkpoint); omit to evaluate the base model")
    config_args(e)
    e.add_argument("--split", default="test", choices=("train", "test", "ood"))
    e.add_argument("--k", default=None, help="comma-separated k values (default: 1, 2, 4, ... up to --n-samples)")
    e.add_argument("--n-samples", type=int, default=16)
    e.add_argument("--num-prompts", type=int, default=64)
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser("report", help="a self-contained HTML report of one run or a comparison of several")
    r.add_argument("run_dirs", nargs="+")
    r.add_argument("--out")
    r.set_defaults(func=cmd_report)

    c = sub.add_parser("compare", help="every method against GRPO over several seeds, one budget (resumable)")
    c.add_argument("--methods", default="grpo,entropy_bonus,clip_higher,eepo,policy_split,erpo,poly_epo")
    c.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    c.add_argument("--steps", type=int, default=100)
    c.add_argument("--out", required=True, help="study directory (run again with the same plan to resume)")
    c.add_argument("--eval-prompts", type=int, default=32, help="evaluation prompts per split")
    c.add_argument("--eval-samples", type=int, default=64, help="samples per prompt: pass@k up to this k")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a RunConfig field for every run (`workbench options` lists them)")
    c.set_defaults(func=cmd_compare)

    o = sub.add_parser("options", help="every RunConfig field, or one method's options: default, allowed values, help")
    o.add_argument("--method", choices=sorted(OPTIONS["method"].choices), help="that method's method_options instead")
    o.add_argument("--markdown", action="store_true", help="all of them as the markdown tables of docs/methods.md")
    o.set_defaults(func=cmd_options)

    b = sub.add_parser("build-tiny", help="pretrain the embedded model (deterministic, about 20 minutes on 2 cores)")
    b.add_argument("--out", help="where to write it (default: the package's checkpoint directory)")
    b.add_argument("--steps", type=int, help="training steps (default: the shipped model's)")
    b.set_defaults(func=cmd_build_tiny)
    return p


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError
    from .policy import PolicyLoadError
    from .store import CheckpointError
    from .tasks import RewardFunctionError

    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, PolicyLoadError, CheckpointError, RewardFunctionError) as error:
        # errors in what the user gave (config, model, checkpoint, data): the message, not a traceback
        print(f"workbench: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
