"""Overhead of an attached TrainingDashboard on a default GRPO step (``RunConfig()``).

    python bench/dashboard_overhead.py [--steps 20] [--warmup 3]

The dashboard is built without a frontend, exactly as in a notebook: subscribed to the trainer,
updating its status line every phase and redrawing its figures (throttled) every step. Steps
alternate: one driven by the dashboard's ``step()`` with it attached, one by ``trainer.step()``
with it detached, so drift in the machine's speed affects both alike. Prints the step times,
their ratio (target: at most 1.05), and, because a busy machine makes that ratio noisy, the
time spent inside the dashboard's callbacks during each step (timed by subscribers placed
just before and just after it) as a fraction of the step.

Not a test: numbers to record in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from widgets import TrainingDashboard
from workbench import RunConfig, Trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each kind")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each kind first")
    args = parser.parse_args()

    trainer = Trainer(RunConfig())
    dashboard = TrainingDashboard(trainer)
    dashboard.detach()
    entered, inside = [0.0], [0.0]
    brackets: list = []

    def attach() -> None:
        # subscribers run in order: two timers placed just before and just after the dashboard
        brackets.append(trainer.subscribe(lambda _: entered.__setitem__(0, time.perf_counter())))
        dashboard.attach()
        brackets.append(trainer.subscribe(
            lambda _: inside.__setitem__(0, inside[0] + time.perf_counter() - entered[0])))

    def detach() -> None:
        dashboard.detach()
        while brackets:
            brackets.pop()()

    times: dict[str, list[float]] = {"without": [], "with": []}
    share: list[float] = []
    for i in range(args.warmup + args.steps):
        for kind in ("without", "with"):
            detach()
            if kind == "with":
                attach()
            inside[0] = 0.0
            started = time.perf_counter()
            if kind == "with":
                dashboard.step()
            else:
                trainer.step()
            seconds = time.perf_counter() - started
            if i >= args.warmup:
                times[kind].append(seconds)
                if kind == "with":
                    share.append(inside[0] / seconds)
    detach()
    dashboard.attach()

    redraw = []
    for _ in range(20):
        started = time.perf_counter()
        dashboard.redraw()
        redraw.append(time.perf_counter() - started)

    print(f"TrainingDashboard overhead on a default GRPO step ({trainer.cfg.num_prompts} prompts x "
          f"{trainer.cfg.num_generations} generations, {trainer.device}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
          f"{args.steps} steps each, interleaved after {args.warmup} warm-up rounds")
    for kind, values in times.items():
        print(f"  {kind:>7} dashboard: median {statistics.median(values):.3f} s, mean {statistics.mean(values):.3f} s, "
              f"min {min(values):.3f} s")
    ratio_median = statistics.median(times["with"]) / statistics.median(times["without"])
    ratio_mean = statistics.mean(times["with"]) / statistics.mean(times["without"])
    print(f"  ratio with/without: median {ratio_median:.3f}, mean {ratio_mean:.3f} (target <= 1.05)")
    print(f"  time inside the dashboard's callbacks: median {statistics.median(share):.2%} of a step, "
          f"max {max(share):.2%}")
    print(f"  one redraw of {len(dashboard.history)} points per series: median "
          f"{statistics.median(redraw) * 1e3:.1f} ms; {dashboard.redraws} redraws in all")
    dashboard.close()


if __name__ == "__main__":
    main()
