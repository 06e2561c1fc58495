"""EEPO over a long run, with and without clipping the unlearning gradient.

    python bench/eepo_long.py --clips none,0.3 --steps 500 --out runs/eepo-long \\
        --figure docs/img/eepo-long.png --json docs/eepo-long.json

Trains default EEPO on the embedded model once per ``unlearn_max_grad_norm`` in ``--clips``
("none" is the paper's plain step) into ``OUT/clip-<value>``, continuing a run directory that
is already there, and compares them: the unlearning gradient's norm (before clipping), how
far the step moves the stage-1 tokens (log-prob drop), the accuracy of each stage, and token
entropy. Two clip values can train side by side in two processes (one ``--clips`` each, the
same ``--out``); ``--figure-only`` then draws every run under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from workbench import RunConfig, Trainer
from workbench.run.store import RunStore

KEYS = {
    "eepo_unlearn_grad_norm": "unlearning gradient norm (before clipping)",
    "eepo_logp_drop": "log-prob drop of stage-1 tokens (nats/token)",
    "stage1_accuracy": "accuracy: stage 1 (solid), stage 2 (dashed)",
    "entropy_mean": "token entropy (nats)",
}
WINDOW = 25  # steps per point in the figure and per row of the summary


def parse_clip(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def train(clip: float | None, steps: int, out: Path, threads: int) -> None:
    if (out / "config.yaml").exists():
        trainer = Trainer.resume(out)
    else:
        cfg = RunConfig(method="eepo", method_options={"unlearn_max_grad_norm": clip}, threads=threads,
                        checkpoint_every=100)
        trainer = Trainer(cfg, out_dir=out)
    while trainer.step_index < steps:
        m = trainer.step().metrics
        if trainer.step_index % WINDOW == 0:
            print(f"clip {clip}: step {m['step']:>4}, grad norm {m['eepo_unlearn_grad_norm']:.2f}, "
                  f"logp drop {m['eepo_logp_drop']:.3f}, stage accuracy {m['stage1_accuracy']:.2f} / "
                  f"{m['stage2_accuracy']:.2f}, entropy {m['entropy_mean']:.3f}", flush=True)


def window_means(rows: list[dict], key: str) -> list[float]:
    """Means over each WINDOW steps; the unlearning numbers over the steps whose gate was on
    (a closed gate records 0 for them), NaN where it never opened."""
    means = []
    for i in range(0, len(rows) - WINDOW + 1, WINDOW):
        values = [r[key] for r in rows[i:i + WINDOW] if r["eepo_gate"] or not key.startswith("eepo_")]
        means.append(statistics.mean(values) if values else math.nan)
    return means


def summarise(runs: dict[str, list[dict]]) -> dict:
    keys = [*KEYS, "stage2_accuracy"]
    return {label: {"steps": len(rows), "window": WINDOW,
                    **{key: [None if math.isnan(v) else round(v, 4) for v in window_means(rows, key)] for key in keys}}
            for label, rows in runs.items()}


def draw(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for i, (label, s) in enumerate(summary.items()):
        x = [WINDOW * (j + 1) for j in range(len(s["entropy_mean"]))]
        for ax, key in zip(axes, KEYS):
            ax.plot(x, [math.nan if v is None else v for v in s[key]], color=f"C{i}", label=label)
        axes[2].plot(x, s["stage2_accuracy"], color=f"C{i}", linestyle="--")
    for ax, title in zip(axes, KEYS.values()):
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
    axes[0].legend(title="unlearn_max_grad_norm", fontsize=8)
    fig.suptitle(f"EEPO on the embedded model, {WINDOW}-step means", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", default="none,0.3", help="unlearn_max_grad_norm values, 'none' for no clipping")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/eepo-long")
    parser.add_argument("--figure", help="draw the comparison into this PNG")
    parser.add_argument("--json", help="write the windowed means here")
    parser.add_argument("--figure-only", action="store_true", help="compare the runs under --out; train nothing")
    args = parser.parse_args()
    out = Path(args.out)
    if not args.figure_only:
        for text in args.clips.split(","):
            clip = parse_clip(text)
            train(clip, args.steps, out / f"clip-{clip}", args.threads)
    runs = {d.name.removeprefix("clip-"): RunStore(d).read_metrics()[:args.steps] for d in sorted(out.glob("clip-*"))}
    summary = summarise(runs)
    for label, s in summary.items():
        print(f"unlearn_max_grad_norm {label} ({s['steps']} steps), {WINDOW}-step means at the start / middle / end:")
        for key in s:
            if isinstance(s[key], list):
                shown = [s[key][0], s[key][len(s[key]) // 2], s[key][-1]]
                print(f"  {key:>24}: " + " / ".join("gate shut" if v is None else f"{v:.3f}" for v in shown))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    if args.figure:
        draw(summary, Path(args.figure))


if __name__ == "__main__":
    main()
