"""A fixed-seed run of several methods on the embedded model, plotted side by side: the
figure and numbers of docs/methods.md.

    python bench/methods_60.py [--methods grpo,eepo,policy_split] [--steps 60] [--seed 0]

Plots reward (accuracy), mean token entropy and distinct strategies per group over steps,
and evaluates each final policy on the test split (64 prompts x 16 samples).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from workbench import RunConfig, Trainer  # noqa: E402

PANELS = (("reward_mean", "accuracy (reward, mean of 64)"), ("entropy_mean", "token entropy (nats)"),
          ("distinct_strategies", "distinct strategies per group"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="grpo,eepo,policy_split")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs")
    args = parser.parse_args()
    runs = {}
    for method in args.methods.split(","):
        trainer = Trainer(RunConfig(method=method, seed=args.seed))
        started = time.time()
        history = trainer.run(args.steps)
        seconds = time.time() - started
        final = trainer.evaluate("test", k=(1, 4, 16), n_samples=16, num_prompts=64)
        runs[method] = {"history": history, "final": final, "seconds": seconds}
        print(f"{method:>13}: {seconds:5.0f} s  last-10 reward {history.reward_mean.tail(10).mean():.3f}  "
              f"entropy {history.entropy_mean.tail(10).mean():.3f}  strategies {history.distinct_strategies.tail(10).mean():.2f}  "
              f"| test pass@1 {final['pass@1']:.3f} pass@16 {final['pass@16']:.3f} "
              f"distinct correct {final['distinct_correct_strategies']:.2f}")
    out = Path(args.out)
    (out / "img").mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for method, run in runs.items():
        smooth = run["history"].rolling(5, min_periods=1).mean()
        for ax, (key, title) in zip(axes, PANELS):
            ax.plot(run["history"]["step"], smooth[key], label=method)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{args.steps} steps on the embedded model, seed {args.seed} (5-step means)", fontsize=11)
    fig.tight_layout()
    fig.savefig(out / "img" / "methods-60.png", dpi=110)
    summary = {m: {"final": r["final"], "seconds": r["seconds"],
                   "history": r["history"].to_dict("list")} for m, r in runs.items()}
    (out / "methods-60.json").write_text(json.dumps(summary, indent=1, default=float))
    print(f"plot: {out / 'img' / 'methods-60.png'}")


if __name__ == "__main__":
    main()
