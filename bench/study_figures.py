"""The figures and the table of docs/RESULTS.md, from a study written by ``workbench compare``.

    workbench compare --seeds 3 --steps 100 --out runs/study
    python bench/study_figures.py runs/study [--out docs] [--name study]

Writes img/NAME-over-steps.png (entropy, accuracy and distinct strategies over steps: seed
mean, band = the seeds' range), img/NAME-passk.png (pass@k curves per split, seed mean) and
NAME-summary.json, and prints the summary as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from workbench.studies.study import final_evaluations, histories, load_plan, summarize  # noqa: E402

PANELS = (("entropy_mean", "token entropy (nats)"), ("reward_mean", "accuracy (mean reward)"),
          ("distinct_strategies", "distinct strategies per group"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("study")
    parser.add_argument("--out", default="docs")
    parser.add_argument("--name", default="study", help="the files' stem")
    args = parser.parse_args()
    plan, out = load_plan(args.study), Path(args.out)
    (out / "img").mkdir(parents=True, exist_ok=True)
    colours = {m: f"C{i}" for i, m in enumerate(["base", *plan.methods])}

    history = histories(args.study)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(15, 4))
    for method, runs in history.groupby("method", sort=False):
        for ax, (key, title) in zip(axes, PANELS):
            smooth = runs.sort_values("step").groupby("seed")[key].transform(lambda s: s.rolling(5, min_periods=1).mean())
            by_step = smooth.groupby(runs["step"])
            ax.fill_between(by_step.min().index, by_step.min(), by_step.max(), color=colours[method], alpha=0.12)
            ax.plot(by_step.mean().index, by_step.mean(), color=colours[method], label=method)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{len(plan.seeds)} seeds x {plan.steps} steps: seed mean of 5-step means, band = seeds' range",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(out / "img" / f"{args.name}-over-steps.png", dpi=110)

    finals = final_evaluations(args.study)
    fig, axes = plt.subplots(1, len(plan.splits), figsize=(12, 4), sharey=True)
    for ax, split in zip(axes, plan.splits):
        part = finals[finals.split == split]
        ks = sorted(int(c[5:]) for c in part.columns if c.startswith("pass@") and part[c].notna().any())
        for method, runs in part.groupby("method", sort=False):
            base = method.split(" (")[0]
            ax.plot(ks, [runs[f"pass@{k}"].mean() for k in ks], marker="o", markersize=3, color=colours[base],
                    linestyle=":" if "(" in method else "-", label=method)
        ax.set_xscale("log", base=2)
        ax.set_title(f"pass@k on {split} ({plan.eval_prompts} prompts, seed mean)", fontsize=10)
        ax.set_xlabel("k")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("pass@k")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "img" / f"{args.name}-passk.png", dpi=110)

    table = summarize(args.study)
    (out / f"{args.name}-summary.json").write_text(json.dumps(table.to_dict(orient="records"), indent=1))
    k = plan.eval_samples
    columns = ("pass@1", f"pass@{k}", "entropy_mean", "distinct_correct_strategies", "response_length")
    print("| method | split | " + " | ".join(columns) + " | pass@1 vs GRPO |")
    print("|---" * (len(columns) + 3) + "|")
    for _, r in table.sort_values(["split", "method"]).iterrows():
        cells = [_cell(r[c], r.get(f"{c} ci95")) for c in columns]
        gain = r.get("gain_vs_grpo", math.nan)
        print(f"| {r['method']} | {r['split']} | " + " | ".join(cells) + f" | {'' if gain != gain else f'{gain:+.1%}'} |")


def _cell(mean, half) -> str:
    if mean != mean:
        return ""
    return f"{mean:.3f}" if half is None or half != half else f"{mean:.3f} ± {half:.3f}"


if __name__ == "__main__":
    main()
