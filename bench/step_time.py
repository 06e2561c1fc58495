"""Mean wall time of a training step on the embedded model (8 prompts x 8 generations).

    python bench/step_time.py [--methods grpo,eepo,policy_split] [--steps 20] [--warmup 3]

Prints, per method, the mean and median step time, the time of each phase, and the ratio
to GRPO's mean at the same number of generated responses. Not a test: numbers to record in
docs/benchmarks.md (target on a 2-core CPU: GRPO under 2 s; EEPO at most 1.3x GRPO,
Policy Split at most 1.6x).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from workbench import RunConfig, Trainer


def measure(method: str, steps: int, warmup: int) -> tuple[list[float], dict[str, list[float]], float]:
    trainer = Trainer(RunConfig(method=method))
    phase_times: dict[str, list[float]] = {}
    step_times = []
    for i in range(warmup + steps):
        started = last = time.perf_counter()
        for phase in trainer.phases():
            now = time.perf_counter()
            if i >= warmup:
                phase_times.setdefault(phase.name, []).append(now - last)
            last = now
        if i >= warmup:
            step_times.append(time.perf_counter() - started)
    tokens = trainer.history["response_length"].iloc[warmup:].mean() * trainer.cfg.batch_size
    return step_times, phase_times, tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="grpo")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; 8 prompts x 8 generations; {args.steps} steps after {args.warmup} warm-up")
    means = {}
    for method in args.methods.split(","):
        step_times, phase_times, tokens = measure(method, args.steps, args.warmup)
        means[method] = statistics.mean(step_times)
        ratio = f", {means[method] / means['grpo']:.2f}x GRPO" if "grpo" in means and method != "grpo" else ""
        print(f"{method}: mean {means[method]:.3f} s, median {statistics.median(step_times):.3f} s, "
              f"min {min(step_times):.3f} s, ~{tokens:.0f} generated tokens/step{ratio}")
        print("   " + ", ".join(f"{name} {statistics.mean(v):.3f}" for name, v in phase_times.items()))


if __name__ == "__main__":
    main()
