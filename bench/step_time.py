"""Wall time of a training step on the embedded model (8 prompts x 8 generations).

    python bench/step_time.py [--methods grpo,eepo,policy_split] [--steps 20] [--warmup 3]
                              [--forced-length L] [--telemetry-overhead]

Prints, per method, the mean and median step time, the time of each phase, and the ratio
to GRPO's at the same number of generated responses. Methods are stepped in turn (one step
of each, then the next round), so a machine whose speed drifts affects all alike.

``--forced-length L``: every completion is exactly L tokens (the sampler never sees EOS),
as when rollouts are long reasoning traces and sampling dominates a step.
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
import os
import platform
import statistics
import time

import torch

from workbench import RunConfig, Trainer, metrics


def make_trainer(method: str, forced_length: int | None, telemetry: bool = True, eepo_gate: str = "always") -> Trainer:
    overrides = {"max_completion_length": forced_length} if forced_length else {}
    if method == "eepo":
        overrides["method_options"] = {"gate": eepo_gate}
    trainer = Trainer(RunConfig(method=method, **overrides))
    if forced_length:
        trainer.sampler.eos_token_id = -1  # no token id is -1: every row runs to the length limit
    trainer.sampler.telemetry = telemetry
    return trainer


def timed_step(trainer: Trainer) -> tuple[float, dict[str, float]]:
    phases = {}
    started = last = time.perf_counter()
    for phase in trainer.phases():
        now = time.perf_counter()
        phases[phase.name] = now - last
        last = now
    return time.perf_counter() - started, phases


def measure(trainers: dict[str, Trainer], steps: int, warmup: int) -> dict[str, tuple[list[float], dict[str, list[float]]]]:
    results = {name: ([], {}) for name in trainers}
    for round_ in range(warmup + steps):
        for name, trainer in trainers.items():
            seconds, phases = timed_step(trainer)
            if round_ >= warmup:
                results[name][0].append(seconds)
                for phase, t in phases.items():
                    results[name][1].setdefault(phase, []).append(t)
    return results


def report(results, trainers, warmup: int, baseline: str) -> None:
    base = statistics.median(results[baseline][0]) if baseline in results else None
    for name, (step_times, phase_times) in results.items():
        median = statistics.median(step_times)
        tokens = trainers[name].history["response_length"].iloc[warmup:].mean() * trainers[name].cfg.batch_size
        ratio = f", {median / base:.2f}x {baseline}" if base and name != baseline else ""
        print(f"{name}: median {median:.3f} s, mean {statistics.mean(step_times):.3f} s, min {min(step_times):.3f} s, "
              f"~{tokens:.0f} generated tokens/step{ratio}")
        print("   " + ", ".join(f"{p} {statistics.median(v):.3f}" for p, v in phase_times.items()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="grpo")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--forced-length", type=int, default=None)
    parser.add_argument("--telemetry-overhead", action="store_true")
    parser.add_argument("--dashboard", action="store_true")
    parser.add_argument("--eepo-gate", default="always",
                        help="EEPO's gate; 'always' (default) measures the unlearning step on every step, its worst case")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; 8 prompts x 8 generations; {args.steps} steps after {args.warmup} warm-up"
          + (f"; completions forced to {args.forced_length} tokens" if args.forced_length else ""))
    if args.telemetry_overhead:
        trainers = {"grpo": make_trainer("grpo", args.forced_length),
                    "grpo-no-telemetry": make_trainer("grpo", args.forced_length, telemetry=False)}
        find_pivots = metrics.find_pivots
        # pivots are flagged after sampling; the no-telemetry trainer gets none
        metrics.find_pivots = lambda entropy, mask, *a, **k: (
            torch.zeros_like(mask, dtype=torch.bool) if (entropy == 0).all() else find_pivots(entropy, mask, *a, **k))
        results = measure(trainers, args.steps, args.warmup)
        report(results, trainers, args.warmup, "grpo-no-telemetry")
        return
    if args.dashboard:
        from widgets import TrainingDashboard

        trainers = {"grpo": make_trainer("grpo", args.forced_length),
                    "grpo+dashboard": make_trainer("grpo", args.forced_length)}
        dashboard = TrainingDashboard(trainers["grpo+dashboard"])  # subscribed: redraws on the trainer's phases
        report(measure(trainers, args.steps, args.warmup), trainers, args.warmup, "grpo")
        dashboard.close()
        return
    trainers = {m: make_trainer(m, args.forced_length, eepo_gate=args.eepo_gate) for m in args.methods.split(",")}
    report(measure(trainers, args.steps, args.warmup), trainers, args.warmup, "grpo")


if __name__ == "__main__":
    main()
