"""A fixed-seed run of several methods on the embedded model, plotted side by side: the
figures and numbers of docs/methods.md.

    python bench/methods_60.py [--methods grpo,eepo,policy_split,erpo,poly_epo] [--steps 60] [--seed 0]

Plots reward (accuracy), mean token entropy and distinct strategies per group over steps
(img/methods-60.png), and the pass@k curves (k = 1 ... 64) of the base model and of each
final policy on the test and ood splits (img/methods-60-passk.png); Policy Split's policy
is evaluated in both of its modes.
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

SPLITS = ("test", "ood")
PANELS = (("reward_mean", "accuracy (reward, mean of 64)"), ("entropy_mean", "token entropy (nats)"),
          ("distinct_strategies", "distinct strategies per group"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="grpo,eepo,policy_split,erpo,poly_epo")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", type=int, default=32, help="evaluation prompts per split")
    parser.add_argument("--samples", type=int, default=64, help="samples per evaluation prompt (the largest k)")
    parser.add_argument("--out", default="docs")
    args = parser.parse_args()
    def evaluate(trainer: Trainer, mode: str = "normal") -> dict:
        return {split: trainer.evaluate(split, n_samples=args.samples, num_prompts=args.prompts, mode=mode)
                for split in SPLITS}

    base = evaluate(Trainer(RunConfig(seed=args.seed)))
    curves = {"base": base}
    runs = {}
    for method in args.methods.split(","):
        trainer = Trainer(RunConfig(method=method, seed=args.seed))
        started = time.time()
        history = trainer.run(args.steps)
        seconds = time.time() - started
        final = evaluate(trainer)
        curves[method] = final
        if method == "policy_split":
            curves["policy_split (HE mode)"] = evaluate(trainer, mode="high_entropy")
        runs[method] = {"history": history, "final": final, "seconds": seconds}
        test = final["test"]
        print(f"{method:>13}: {seconds:5.0f} s  last-10 reward {history.reward_mean.tail(10).mean():.3f}  "
              f"entropy {history.entropy_mean.tail(10).mean():.3f}  strategies {history.distinct_strategies.tail(10).mean():.2f}  "
              f"| test pass@1 {test['pass@1']:.3f} pass@{args.samples} {test[f'pass@{args.samples}']:.3f} "
              f"distinct correct {test['distinct_correct_strategies']:.2f} | ood pass@{args.samples} "
              f"{final['ood'][f'pass@{args.samples}']:.3f}")
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
    fig, axes = plt.subplots(1, len(SPLITS), figsize=(11, 3.8), sharey=True)
    for ax, split in zip(axes, SPLITS):
        for name, result in curves.items():
            ks = sorted(int(key[5:]) for key in result[split] if key.startswith("pass@"))
            style = {"color": "black", "linestyle": "--"} if name == "base" else {}
            ax.plot(ks, [result[split][f"pass@{k}"] for k in ks], marker="o", markersize=3, label=name, **style)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{split} split: {args.prompts} prompts x {args.samples} samples", fontsize=10)
        ax.set_xlabel("k")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("pass@k")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "img" / "methods-60-passk.png", dpi=110)
    summary = {"curves": curves, "runs": {m: {"final": r["final"], "seconds": r["seconds"],
                                              "history": r["history"].to_dict("list")} for m, r in runs.items()}}
    (out / "methods-60.json").write_text(json.dumps(summary, indent=1, default=float))
    print(f"plots: {out / 'img' / 'methods-60.png'}, {out / 'img' / 'methods-60-passk.png'}")


if __name__ == "__main__":
    main()
