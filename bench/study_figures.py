"""The figures and the table of docs/RESULTS.md, from one or more studies written by ``workbench compare``.

    workbench compare --seeds 3 --steps 100 --out runs/study
    python bench/study_figures.py runs/study [--out docs] [--name study]
    python bench/study_figures.py runs/real-study runs/real-study-poly --name real-study \\
        --panels entropy_mean,reward_mean,response_length,frac_reward_zero_std

Several studies of one setting (a method whose options differ has a study of its own, since
``--set`` reaches every run) are drawn as one: their methods side by side, the base model once.
Writes img/NAME-over-steps.png (``--panels`` over training steps: seed mean of 5-step means,
band = the seeds' range), img/NAME-passk.png (pass@k curves per split, seed mean) and
NAME-summary.json, and prints two markdown tables: the evaluations (mean ± 95% t interval over
seeds, each seed's value and, where recorded, one evaluation's own interval) and what training
recorded (entropy early and late, the step where it fell below 0.5 nats).
``--evaluation latest`` reads each run's last ``workbench eval`` instead of the study's own
evaluation (the base model's: its eval.json's ``step-0``). Colours: the project's run colours
(``widgets.style.run_color``) in the order the methods are listed, the base model black.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from widgets.style import BLACK, run_color  # noqa: E402
from workbench.metrics import registry  # noqa: E402
from workbench.studies.study import final_evaluations, histories, load_plan, mean_ci, summarize_finals  # noqa: E402

PANELS = "entropy_mean,reward_mean,distinct_strategies"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("studies", nargs="+", help="study directories of one setting")
    parser.add_argument("--out", default="docs")
    parser.add_argument("--name", default="study", help="the files' stem")
    parser.add_argument("--panels", default=PANELS, help="metrics drawn over steps, comma-separated")
    parser.add_argument("--evaluation", choices=("final", "latest"), default="final",
                        help="the study's own evaluation, or each run's latest `workbench eval` (a larger one)")
    args = parser.parse_args()
    plans = [load_plan(s) for s in args.studies]
    plan, out = plans[0], Path(args.out)
    (out / "img").mkdir(parents=True, exist_ok=True)
    methods = [m for p in plans for m in p.methods]
    colours = {"base": BLACK, **{m: run_color(i) for i, m in enumerate(methods)}}

    history = pd.concat([histories(s) for s in args.studies], ignore_index=True)
    panels = args.panels.split(",")
    columns = len(panels) if len(panels) <= 3 else math.ceil(len(panels) / 2)  # 4 panels: 2 x 2
    rows = math.ceil(len(panels) / columns)
    fig, grid = plt.subplots(rows, columns, figsize=(5.5 * columns, 4 * rows), squeeze=False)
    axes = grid.ravel()
    for method, runs in history.groupby("method", sort=False):
        for ax, key in zip(axes, panels):
            ordered = runs.sort_values("step")
            smooth = ordered.groupby("seed")[key].transform(lambda s: s.rolling(5, min_periods=1).mean())
            by_step = smooth.groupby(ordered["step"])
            ax.fill_between(by_step.min().index, by_step.min(), by_step.max(), color=colours[method], alpha=0.12)
            ax.plot(by_step.mean().index, by_step.mean(), color=colours[method], label=method)
            ax.set_title(f"{registry.title(key)}: {registry.get(key).help}", fontsize=9, wrap=True)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    seeds = sorted(history.seed.unique())
    fig.suptitle(f"{len(seeds)} seeds x {plan.steps} steps: seed mean of 5-step means, band = seeds' range",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(out / "img" / f"{args.name}-over-steps.png", dpi=110)

    finals = pd.concat([final_evaluations(s, args.evaluation) for s in args.studies], ignore_index=True)
    finals = finals.drop_duplicates(subset=["method", "seed", "split"])  # the base model: once
    splits = [s for s in plan.splits if s in set(finals.split)]
    fig, axes = plt.subplots(1, len(splits), figsize=(6 * len(splits), 4), sharey=True, squeeze=False)
    for ax, split in zip(axes[0], splits):
        part = finals[finals.split == split]
        ks = sorted(int(c[5:]) for c in part.columns if c.startswith("pass@") and part[c].notna().any())
        for method, runs in part.groupby("method", sort=False):
            base = method.split(" (")[0]
            ax.plot(ks, [runs[f"pass@{k}"].mean() for k in ks], marker="o", markersize=3, color=colours[base],
                    linestyle=":" if "(" in method or method == "base" else "-", label=method)
        ax.set_xscale("log", base=2)
        prompts = int(part["prompts"].max()) if "prompts" in part else plan.eval_prompts
        ax.set_title(f"pass@k on {split} ({prompts} prompts x {ks[-1]}, seed mean)", fontsize=10)
        ax.set_xlabel("k")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("pass@k")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "img" / f"{args.name}-passk.png", dpi=110)

    table = summarize_finals(finals)
    (out / f"{args.name}-summary.json").write_text(json.dumps(table.to_dict(orient="records"), indent=1))
    k = max(int(c[5:]) for c in finals.columns if c.startswith("pass@"))
    columns = ("pass@1", f"pass@{k}", "entropy_mean", "response_length")
    own = "accuracy_ci95_sampling" in table  # one evaluation's own interval, seed mean
    print("| method | split | " + " | ".join(columns) + " | pass@1 by seed |"
          + (" one evaluation's ± |" if own else "") + " pass@1 vs GRPO | pass@1 - GRPO's, paired by seed |")
    print("|---" * (len(columns) + 5 + own) + "|")
    for _, r in table.sort_values(["split", "method"]).iterrows():
        cells = [_cell(r[c], r.get(f"{c} ci95")) for c in columns]
        by_seed = finals[(finals.method == r["method"]) & (finals.split == r["split"])].sort_values("seed")["pass@1"]
        cells.append(", ".join(f"{v:.3f}" for v in by_seed))
        if own:
            cells.append(f"{r['accuracy_ci95_sampling']:.3f}")
        gain = r.get("gain_vs_grpo", math.nan)
        cells.append("" if gain != gain else f"{gain:+.1%}")
        cells.append(_paired_difference(finals, r["method"], r["split"]))
        print(f"| {r['method']} | {r['split']} | " + " | ".join(cells) + " |")
    print()
    cap = plan.overrides.get("max_completion_length")
    at_cap = {key: v for study in args.studies for key, v in share_at_length_cap(study, cap).items()} if cap else {}
    print_training_table(history, plan.steps, at_cap)


def share_at_length_cap(study: str, cap: int, window: int = 10) -> dict[tuple[str, int], float]:
    """(method, seed) -> the share of training responses of the last ``window`` recorded steps
    that reached the length cap ``cap`` (cut off unfinished: a policy in a repetition loop)."""
    from workbench.run.store import RunStore

    plan, shares = load_plan(study), {}
    for method in plan.methods:
        for seed in plan.seeds:
            store = RunStore(plan.run_dir(Path(study), method, seed))
            steps = store.rollout_steps()[-window:] if store.rollouts_dir.exists() else []
            if steps:
                lengths = pd.concat([store.read_rollouts(step)["length"] for step in steps])
                shares[(method, seed)] = float((lengths >= cap).mean())
    return shares


def print_training_table(
    history: pd.DataFrame, steps: int, at_cap: dict, window: int = 10, collapsed: float = 0.5
) -> None:
    """What training recorded, by method, over the runs that finished their ``steps``: entropy
    over the first and last ``window`` steps (seed mean, then each seed's), the share of
    high-entropy tokens and the response length at the end, the share at the length cap
    (``at_cap``, by seed) and the first step where the 5-step mean entropy is below
    ``collapsed`` nats (by seed)."""
    print(f"| training | entropy, first {window} | entropy, last {window} (by seed) | high-entropy share, last "
          f"{window} | step of 5-step entropy < {collapsed} (by seed) | response length, last {window} | "
          f"at the length cap, last {window} (by seed) |")
    print("|---" * 7 + "|")
    for method, runs in history.groupby("method", sort=False):
        first, last, share, length, collapse, capped = [], [], [], [], [], []
        for seed, run in runs.sort_values("step").groupby("seed"):
            if len(run) < steps:
                continue
            capped.append(f"{at_cap[(method, seed)]:.2f}" if (method, seed) in at_cap else "?")
            first.append(run.entropy_mean.head(window).mean())
            last.append(run.entropy_mean.tail(window).mean())
            share.append(run.get("high_entropy_token_fraction", pd.Series([math.nan])).tail(window).mean())
            length.append(run.response_length.tail(window).mean())
            below = run.step[run.entropy_mean.rolling(5).mean() < collapsed]
            collapse.append(str(int(below.iloc[0])) if len(below) else "never")
        if not first:
            continue
        mean = lambda values: sum(values) / len(values)  # noqa: E731
        print(f"| {method} | {mean(first):.2f} | {mean(last):.2f} ({', '.join(f'{v:.2f}' for v in last)}) | "
              f"{mean(share):.2f} | {', '.join(collapse)} | {mean(length):.1f} | {', '.join(capped)} |")


def _paired_difference(finals: pd.DataFrame, method: str, split: str) -> str:
    """Mean ± 95% t half-width of (method - GRPO) pass@1 over the seeds both have."""
    if method in ("grpo", "base"):
        return ""
    part = finals[finals.split == split].pivot_table(index="seed", columns="method", values="pass@1")
    if "grpo" not in part or method not in part:
        return ""
    differences = (part[method] - part["grpo"]).dropna()
    return _cell(*mean_ci(differences)) if len(differences) else ""


def _cell(mean, half) -> str:
    if mean != mean:
        return ""
    return f"{mean:.3f}" if half is None or half != half else f"{mean:.3f} ± {half:.3f}"


if __name__ == "__main__":
    main()
