"""Measure the embedded model and a default 60-step GRPO run on it: the numbers and the plot
of docs/tiny-model.md.

    python bench/grpo_60.py [--steps 60] [--prompts 64] [--samples 16] [--out docs]

Evaluates the base policy on the countdown test split (prompts x samples responses), trains
GRPO with the default RunConfig, evaluates again on the same prompts, and writes
docs/img/grpo-60.png (reward, entropy and distinct strategies per step) and a JSON summary.
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


def evaluate(trainer: Trainer, prompts: int, samples: int) -> dict:
    result = {}
    for split in ("test", "ood"):
        result[split] = trainer.evaluate(split, k=(1, 4, 16), n_samples=samples, num_prompts=prompts)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--out", default="docs")
    args = parser.parse_args()
    trainer = Trainer(RunConfig())
    base = evaluate(trainer, args.prompts, args.samples)
    started = time.time()
    history = trainer.run(args.steps)
    seconds = time.time() - started
    final = evaluate(trainer, args.prompts, args.samples)
    summary = {"config": trainer.cfg.to_dict(), "train_seconds": seconds, "base": base, "final": final,
               "history": history[["step", "reward_mean", "entropy_mean", "distinct_strategies", "kl"]].to_dict("list")}
    out = Path(args.out)
    (out / "img").mkdir(parents=True, exist_ok=True)
    (out / "grpo-60.json").write_text(json.dumps(summary, indent=1))
    plot(history, out / "img" / "grpo-60.png")
    for split in ("test", "ood"):
        for name, result in (("base", base), ("after GRPO", final)):
            r = result[split]
            print(f"{split:>4} {name:>10}: pass@1 {r['pass@1']:.3f}  pass@4 {r['pass@4']:.3f}  pass@16 {r['pass@16']:.3f}  "
                  f"entropy {r['entropy_mean']:.3f} nats  distinct correct strategies {r['distinct_correct_strategies']:.2f}  "
                  f"({r['samples']} samples)")
    print(f"{args.steps} steps in {seconds:.0f} s; plot: {out / 'img' / 'grpo-60.png'}")


def plot(history, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    rolling = history.rolling(5, min_periods=1).mean()
    for ax, key, label in zip(axes, ("reward_mean", "entropy_mean", "distinct_strategies"),
                              ("reward (mean of 64 responses)", "token entropy (nats)", "distinct strategies per group")):
        ax.plot(history["step"], history[key], alpha=0.35, color="tab:blue")
        ax.plot(history["step"], rolling[key], color="tab:blue", label="5-step mean")
        ax.set_xlabel("GRPO step")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("GRPO on the embedded model (countdown, default RunConfig)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
