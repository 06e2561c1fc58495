"""A long GRPO run with a dashboard attached: does resident memory stay flat?

    python bench/long_run.py [--steps 2000] [--out runs/long]

Default GRPO on the embedded model, writing a run directory (metrics every step, rollouts
every step, a checkpoint every 500), with a ``TrainingDashboard`` subscribed and redrawing as
in a notebook (built without a frontend). Prints resident memory (VmRSS) every 100 steps and
the change from step 100 to the end (target: within 10%).
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

from workbench import RunConfig, Trainer


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--out", default=f"runs/long-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()
    from widgets import TrainingDashboard

    trainer = Trainer(RunConfig(checkpoint_every=500), out_dir=args.out)
    dashboard = TrainingDashboard(trainer)
    started = time.time()
    marks = {}
    for step in range(1, args.steps + 1):
        trainer.step()
        if step % 100 == 0:
            dashboard.redraw()
            gc.collect()
            marks[step] = rss_mb()
            print(f"step {step:>5}: RSS {marks[step]:7.1f} MB, {time.time() - started:6.0f} s, "
                  f"reward {trainer.records[-1]['reward_mean']:.3f}, entropy {trainer.records[-1]['entropy_mean']:.3f}")
    first, last = marks[min(marks)], marks[max(marks)]
    print(f"RSS after step {min(marks)}: {first:.1f} MB; after step {max(marks)}: {last:.1f} MB; "
          f"change {100 * (last - first) / first:+.1f}% (target within 10%)")
    dashboard.close()


if __name__ == "__main__":
    main()
