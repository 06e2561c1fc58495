"""Wall time of a training step per method, as a ratio to GRPO's.

    python bench/step_time.py [--methods grpo,eepo,policy_split,erpo,poly_epo] [--steps 20] [--warmup 3]
                              [--length 32] [--forced] [--telemetry-overhead] [--dashboard]
    python bench/step_time.py --model smollm2-135m --prompts 4 --generations 4 --length 48 --steps 3 --warmup 1
    python bench/step_time.py --methods grpo,poly_epo,poly_epo@num_iterations=1   (a field set: @key=value)
    python bench/step_time.py --model smollm2-135m --prompts 4 --generations 4 --length 48 --forced \
        --methods grpo@dtype=float32,grpo@dtype=bfloat16      (the precisions against each other)

``--model`` (tiny, smollm2-135m or a directory), ``--task`` (default: countdown for a plain model,
the real-model default task for a chat model), ``--prompts`` x ``--generations`` responses a step
of up to ``--length`` tokens (default ``RunConfig``: 8 x 8, 32). Prints, per method, the mean and
median step time, the time of each phase, and the ratio to GRPO's (or to the first method
listed, without a plain ``grpo``) at the same number of generated responses, every method in
``--precision`` unless a field sets ``dtype``. Methods are stepped in turn (one step of each, then the next round), so a
machine whose speed drifts affects all alike. ``--json OUT`` also writes the numbers.

``--forced`` (or ``--forced-length L``, the same as ``--length L --forced``): every completion is
exactly ``--length`` tokens (the sampler never sees EOS), as when rollouts are long reasoning
traces and sampling dominates a step.
EEPO runs with ``gate="always"`` unless ``--eepo-gate`` says otherwise: its unlearning step
then runs every step (its worst case; the default entropy gate skips it while entropy is high).
``--dashboard``: GRPO with and without a ``widgets.TrainingDashboard`` attached (built without a
frontend, redrawing as in a notebook; ``bench/dashboard_overhead.py`` also times its callbacks).
``--telemetry-overhead``: GRPO with and without the recorded telemetry (entropy and top-k
per token at sampling, pivot flags after it).

Not a test: numbers to record in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics

import harness
import torch

from workbench import ConfigError, RunConfig, Trainer, metrics

METHODS = "grpo,eepo,policy_split,erpo,poly_epo"


def method_options(args: argparse.Namespace, method: str) -> dict:
    if method == "eepo":
        return {"gate": args.eepo_gate}
    if method == "poly_epo" and args.generations <= 4:  # its sets of 4 need 5 or more generations
        return {"set_size": args.generations - 1}
    return {}


def make_trainer(args: argparse.Namespace, method: str, telemetry: bool = True) -> Trainer:
    method, *settings = method.split("@")  # poly_epo@num_iterations=1: a RunConfig field set
    fields = {key: int(value) if value.isdigit() else value for key, value in (s.split("=") for s in settings)}
    options = {"method_options": method_options(args, method), "dtype": args.precision, **fields}
    trainer = Trainer(RunConfig(model=args.model_dir, task=args.task, method=method, num_prompts=args.prompts,
                                num_generations=args.generations, max_completion_length=args.length,
                                threads=args.threads, **options))
    if args.forced:
        trainer.sampler.eos_token_id = -1  # no token id is -1: every row runs to the length limit
    trainer.sampler.telemetry = telemetry
    return trainer


def measure(trainers: dict[str, Trainer], steps: int, warmup: int) -> dict[str, tuple[list[float], dict[str, list[float]]]]:
    results = {name: ([], {}) for name in trainers}
    for round_ in range(warmup + steps):
        for name, trainer in trainers.items():
            seconds, phases = harness.timed_step(trainer)
            if round_ >= warmup:
                results[name][0].append(seconds)
                for phase, t in phases.items():
                    results[name][1].setdefault(phase, []).append(t)
    return results


def report(results, trainers, warmup: int, baseline: str) -> dict:
    base = statistics.median(results[baseline][0]) if baseline in results else None
    out = {}
    for name, (step_times, phase_times) in results.items():
        median = statistics.median(step_times)
        tokens = trainers[name].history["response_length"].iloc[warmup:].mean() * trainers[name].cfg.batch_size
        out[name] = {"median_s": median, "mean_s": statistics.mean(step_times), "min_s": min(step_times),
                     "tokens": float(tokens), "ratio": median / base if base else None, "times": step_times,
                     "phases_s": {p: statistics.median(v) for p, v in phase_times.items()}}
        ratio = f", {median / base:.2f}x {baseline}" if base and name != baseline else ""
        print(f"{name}: median {median:.3f} s, mean {out[name]['mean_s']:.3f} s, min {min(step_times):.3f} s, "
              f"~{tokens:.0f} generated tokens/step{ratio}")
        print("   " + ", ".join(f"{p} {t:.3f}" for p, t in out[name]["phases_s"].items()))
    return out


def policy_split_floor(results: dict) -> dict:
    """Policy Split samples N responses and trains 2N rows: with GRPO's sample time S and update
    time U from this run, no implementation beats (S + 2U) / (S + U) of GRPO's step."""
    sample, update = results["grpo"]["phases_s"]["sample"], results["grpo"]["phases_s"]["update"]
    floor = (sample + 2 * update) / (sample + update)
    ratio = results["policy_split"]["ratio"]
    print(f"Policy Split: floor (S + 2U) / (S + U) = {floor:.2f}x GRPO (S {sample:.3f} s, U {update:.3f} s); "
          f"measured {ratio:.2f}x = {ratio / floor:.2f}x its floor")
    return {"floor": floor, "ratio_to_floor": ratio / floor, "S": sample, "U": update}


def main() -> None:
    parser = harness.add_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]),
                              prompts=8, generations=8, length=32, steps=20, warmup=3, threads=0)
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--forced", action="store_true", help="every completion exactly --length tokens")
    parser.add_argument("--forced-length", type=int, default=None, help="the same as --length L --forced")
    parser.add_argument("--telemetry-overhead", action="store_true")
    parser.add_argument("--dashboard", action="store_true")
    parser.add_argument("--eepo-gate", default="always",
                        help="EEPO's gate; 'always' (default) measures the unlearning step on every step, its worst case")
    args = harness.resolve(parser.parse_args())
    if args.forced_length:
        args.length, args.forced = args.forced_length, True
    make = functools.partial(make_trainer, args)
    baseline, dashboard = "grpo", None
    if args.telemetry_overhead:
        trainers = {"grpo": make("grpo"), "grpo-no-telemetry": make("grpo", telemetry=False)}
        find_pivots = metrics.find_pivots
        # pivots are flagged after sampling; the no-telemetry trainer gets none
        metrics.find_pivots = lambda entropy, mask, *a, **k: (
            torch.zeros_like(mask, dtype=torch.bool) if (entropy == 0).all() else find_pivots(entropy, mask, *a, **k))
        baseline = "grpo-no-telemetry"
    elif args.dashboard:
        from widgets import TrainingDashboard

        trainers = {"grpo": make("grpo"), "grpo+dashboard": make("grpo")}
        dashboard = TrainingDashboard(trainers["grpo+dashboard"])  # subscribed: redraws on the trainer's phases
    else:
        trainers = {}
        for method in args.methods.split(","):
            try:
                trainers[method] = make(method)
            except ConfigError as error:  # e.g. EEPO and Policy Split need an even number of generations
                print(f"{method}: not run at this setting: {error}")
                continue
            if method_options(args, method.split("@")[0]).get("set_size"):
                print(f"{method}: sets of {args.generations - 1} (its default 4 needs 5 or more generations)")
        baseline = "grpo" if "grpo" in trainers else next(iter(trainers), "grpo")  # ratios to the first listed
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores ({harness.cpu_features()}), "
          f"torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {harness.describe(args)}, "
          f"{'exactly' if args.forced else 'up to'} {args.length} tokens; "
          f"{args.steps} steps after {args.warmup} warm-up")
    results = report(measure(trainers, args.steps, args.warmup), trainers, args.warmup, baseline)
    if "grpo" in results and "policy_split" in results:
        results["policy_split_floor"] = policy_split_floor(results)
    if dashboard is not None:
        dashboard.close()
    harness.write_json(args.json, args, results)


if __name__ == "__main__":
    main()
