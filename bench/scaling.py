"""How a GRPO step's cost grows with the number of generated tokens.

    python bench/scaling.py [--steps 3] [--out docs]

Default GRPO on the embedded model (8 prompts a step, telemetry on), every completion
forced to its full length (EOS suppressed) so the token count is exact:
- ``num_generations`` 8, 16, 32, 64 at 32 tokens;
- completion length 32, 64, 128, 256 at 8 generations.

Writes img/scaling.png (step time and its sampling / update parts against generated
tokens per step, log-log, with a line of slope 1 through the smallest point) and
scaling.json; prints seconds per 1,000 generated tokens for each setting: flat or falling
means cost grows no faster than linearly.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from workbench import RunConfig, Trainer  # noqa: E402

SETTINGS = [("generations", g, 32) for g in (8, 16, 32, 64)] + [("length", 8, n) for n in (32, 64, 128, 256)]


def measure(generations: int, length: int, steps: int) -> dict:
    trainer = Trainer(RunConfig(num_generations=generations, max_completion_length=length))
    trainer.sampler.eos_token_id = -1  # no token id is -1: every completion runs to the limit
    totals, samples, updates = [], [], []
    for i in range(steps + 1):
        started = last = time.perf_counter()
        parts = {}
        for phase in trainer.phases():
            now = time.perf_counter()
            parts[phase.name] = now - last
            last = now
        if i:  # the first step warms up
            totals.append(time.perf_counter() - started)
            samples.append(parts["sample"])
            updates.append(parts["update"])
    tokens = trainer.cfg.num_prompts * generations * length
    return {"generations": generations, "length": length, "tokens": tokens, "step": statistics.median(totals),
            "sample": statistics.median(samples), "update": statistics.median(updates)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default="docs")
    args = parser.parse_args()
    results = {"generations": [], "length": []}
    for axis, generations, length in SETTINGS:
        r = measure(generations, length, args.steps)
        results[axis].append(r)
        print(f"G={generations:>2} L={length:>3}: {r['tokens']:>6} tokens, step {r['step']:.2f} s "
              f"(sample {r['sample']:.2f}, update {r['update']:.2f}), {1000 * r['step'] / r['tokens']:.3f} s per 1k tokens")
    out = Path(args.out)
    (out / "img").mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (axis, label) in zip(axes, (("generations", "num_generations 8-64, 32 tokens"),
                                        ("length", "completion length 32-256, 8 generations"))):
        rows = results[axis]
        tokens = [r["tokens"] for r in rows]
        for key, style in (("step", "o-"), ("sample", "s--"), ("update", "^--")):
            ax.plot(tokens, [r[key] for r in rows], style, label=key)
        ax.plot(tokens, [rows[0]["step"] * t / tokens[0] for t in tokens], ":", color="grey", label="linear (slope 1)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("generated tokens per step")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("seconds")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "img" / "scaling.png", dpi=110)
    (out / "scaling.json").write_text(json.dumps(results, indent=1))
    print(f"plot: {out / 'img' / 'scaling.png'}")


if __name__ == "__main__":
    main()
