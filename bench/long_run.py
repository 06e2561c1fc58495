"""Long runs with a dashboard attached: no NaN, flat memory, and a clean resume.

    python bench/long_run.py [--method grpo] [--steps 2000] [--out runs/long]
    python bench/long_run.py --method all --steps 500 --json docs/long-runs.json

One method (default GRPO) on the embedded model writes a run directory (metrics and rollouts
every step, a checkpoint every ``--checkpoint-every`` steps) with a ``TrainingDashboard``
subscribed and redrawing as in a notebook (built without a frontend). Resident memory (VmRSS)
is sampled every 50 steps after a garbage collection, as it is and after glibc's
``malloc_trim`` hands freed heap pages back; the target is the trimmed figure (the memory in
use) within 10% from step 100 to the end. The raw figure is recorded too: glibc keeps freed
pages of a fragmented heap, so raw RSS wanders by 10% and more from run to run.

Then a crash is simulated: the run goes ``--extra`` steps past its last checkpoint, the trainer
is dropped without saving, and ``Trainer.resume`` must restart from that checkpoint, redo the
same steps with the same numbers, and leave ``metrics.jsonl`` with every step exactly once.

``--method all`` (or a comma list) runs each method in its own child process, so that one
method's memory does not carry into the next, and writes every result to ``--json``.
``--figure PNG`` draws resident memory and entropy over the steps of every method (with
``--figure-only``, from the results already in ``--json``).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

from workbench import RunConfig, Trainer, methods
from workbench.run.store import RunStore

RSS_EVERY = 50
# Per-step numbers compared when the same steps run again after a resume. Rewards must match
# exactly (the same tokens were sampled); the others to float rounding, since CPU kernels may sum
# in a different order when the same tensors land at differently aligned addresses.
RESUME_KEYS = ("reward_mean", "loss", "entropy_mean", "grad_norm", "kl")
RESUME_TOLERANCE = 1e-5
ENTROPY_WINDOW = 20


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def baseline_step(samples: dict) -> int:
    """The step memory changes are measured from: the first sample from step 100 on (warm-up)."""
    return min((k for k in samples if k >= 100), default=min(samples))


def release_free_heap() -> None:
    """Hand the heap pages glibc keeps after frees back to the OS (nothing elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def non_finite(record: dict) -> list[str]:
    return [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]


def long_run(method: str, steps: int, checkpoint_every: int, extra: int, out: Path, threads: int) -> dict:
    from widgets import TrainingDashboard

    if steps % checkpoint_every:
        raise SystemExit(f"--steps {steps} must be a multiple of --checkpoint-every {checkpoint_every}")
    if not 0 < extra < checkpoint_every:
        raise SystemExit(f"--extra {extra} must be in [1, {checkpoint_every - 1}]: past the last checkpoint, before the next")
    cfg = RunConfig(method=method, checkpoint_every=checkpoint_every, threads=threads)
    trainer = Trainer(cfg, out_dir=out)
    dashboard = TrainingDashboard(trainer)
    started, rss, rss_trimmed, step_times, bad = time.time(), {}, {}, [], []
    for step in range(1, steps + extra + 1):
        result = trainer.step()
        step_times.append(result.metrics["step_time"])
        if result.metrics["skipped"] or non_finite(result.metrics):
            bad.append((result.metrics["step"], non_finite(result.metrics) or ["skipped"]))
        if (step % RSS_EVERY == 0 and step <= steps) or step == steps:
            dashboard.redraw()
            gc.collect()
            rss[step] = rss_mb()
            release_free_heap()
            rss_trimmed[step] = rss_mb()
            m = trainer.records[-1]
            print(f"{method:>17} step {step:>5}: RSS {rss[step]:7.1f} MB ({rss_trimmed[step]:7.1f} trimmed), "
                  f"{time.time() - started:6.0f} s, "
                  f"reward {m['reward_mean']:.3f}, entropy {m['entropy_mean']:.3f}", flush=True)
    entropy = [r["entropy_mean"] for r in trainer.records[:steps]]
    crashed = trainer.records[steps:]
    dashboard.close()
    del trainer, dashboard
    gc.collect()

    resumed = Trainer.resume(out)
    resumed_from = resumed.step_index
    for _ in range(steps + extra - resumed_from):
        resumed.step()
    again = resumed.records[-extra:]
    resume_diff = {k: max(abs(a[k] - b[k]) / max(1.0, abs(a[k])) for a, b in zip(crashed, again)) for k in RESUME_KEYS}
    logged = [row["step"] for row in RunStore(out).read_metrics()]

    first = baseline_step(rss)
    return {
        "method": method,
        "steps": steps,
        "threads": threads,
        "seconds": round(time.time() - started, 1),
        "step_time_median": round(statistics.median(step_times), 3),
        "non_finite_steps": bad,
        "rss_mb": {str(k): round(v, 1) for k, v in rss.items()},
        "rss_trimmed_mb": {str(k): round(v, 1) for k, v in rss_trimmed.items()},
        "rss_change_pct": round(100 * (rss[steps] - rss[first]) / rss[first], 2),
        "rss_trimmed_change_pct": round(100 * (rss_trimmed[steps] - rss_trimmed[first]) / rss_trimmed[first], 2),
        "entropy_window_means": [round(statistics.mean(entropy[i:i + ENTROPY_WINDOW]), 5)
                                 for i in range(0, len(entropy) - ENTROPY_WINDOW + 1, ENTROPY_WINDOW)],
        "resumed_from": resumed_from,
        "resume_max_diff": resume_diff,
        "metrics_steps_once_each": logged == list(range(steps + extra)),
        "final_reward_mean": round(statistics.mean(r["reward_mean"] for r in resumed.records[-50:]), 4),
        "final_entropy_mean": round(statistics.mean(r["entropy_mean"] for r in resumed.records[-50:]), 4),
    }


def passed(result: dict) -> bool:
    return (not result["non_finite_steps"] and abs(result["rss_trimmed_change_pct"]) <= 10
            and result["resumed_from"] == result["steps"] and result["resume_max_diff"]["reward_mean"] == 0
            and max(result["resume_max_diff"].values()) < RESUME_TOLERANCE
            and result["metrics_steps_once_each"])


def write_results(path: Path, results: list[dict]) -> None:
    """Merge into ``path`` (a result replaces the same method's earlier one), written atomically."""
    kept = json.loads(path.read_text()) if path.exists() else []
    fresh = {r["method"] for r in results}
    merged = sorted([r for r in kept if r["method"] not in fresh] + results, key=lambda r: r["method"])
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(merged, indent=1) + "\n")
    temporary.replace(path)


def draw_figure(results: list[dict], path: Path) -> None:
    """Memory in use relative to step 100 (left) and entropy, 20-step means (right), per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = plt.get_cmap("tab20").colors
    fig, (memory, entropy) = plt.subplots(1, 2, figsize=(13, 4.4))
    memory.axhspan(-10, 10, color="0.93", label="target: within 10%")
    for i, r in enumerate(results):
        colour = colours[(2 * i) % 20 + (2 * i) // 20]  # the dark shades first, then the light ones
        trimmed = {int(k): v for k, v in r["rss_trimmed_mb"].items()}
        base = trimmed[baseline_step(trimmed)]
        memory.plot(list(trimmed), [100 * (v - base) / base for v in trimmed.values()],
                    marker=".", color=colour, label=r["method"])
        means = r["entropy_window_means"]
        entropy.plot([ENTROPY_WINDOW * (j + 1) for j in range(len(means))], means, color=colour)
    memory.set(title="resident memory after malloc_trim: change from step 100 (%)", xlabel="step")
    entropy.set(title=f"token entropy (nats), {ENTROPY_WINDOW}-step means", xlabel="step", yscale="log")
    for ax in (memory, entropy):
        ax.grid(alpha=0.3)
    memory.legend(fontsize=7, ncol=3, loc="upper left")
    fig.suptitle(f"{results[0]['steps']} steps of each method on the embedded model, a dashboard attached", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="grpo", help="a method name, a comma list, or 'all'")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--extra", type=int, default=20, help="steps past the last checkpoint before the crash")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--out", default=f"runs/long-{time.strftime('%Y%m%d-%H%M%S')}")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--figure", help="draw memory and entropy over steps into this PNG")
    parser.add_argument("--figure-only", action="store_true", help="draw from --json; run nothing")
    args = parser.parse_args()
    if args.figure_only:
        if not (args.figure and args.json):
            raise SystemExit("--figure-only needs --figure and --json")
        draw_figure(json.loads(Path(args.json).read_text()), Path(args.figure))
        return
    chosen = methods.names() if args.method == "all" else args.method.split(",")
    for name in chosen:
        methods.get(name)  # an unknown name fails here, listing the valid ones

    if len(chosen) == 1:
        results = [long_run(chosen[0], args.steps, args.checkpoint_every, args.extra, Path(args.out), args.threads)]
    else:
        results = []
        for name in chosen:
            child_json = Path(args.out) / f"{name}.json"
            subprocess.run([sys.executable, __file__, "--method", name, "--steps", str(args.steps),
                            "--checkpoint-every", str(args.checkpoint_every), "--extra", str(args.extra),
                            "--threads", str(args.threads), "--out", str(Path(args.out) / name),
                            "--json", str(child_json)], check=False)  # a failed check still writes its result
            results += json.loads(child_json.read_text())
    for r in results:
        print(f"{r['method']:>17}: {r['seconds']:6.0f} s, step {r['step_time_median']:.3f} s, "
              f"non-finite steps {len(r['non_finite_steps'])}, RSS {r['rss_trimmed_change_pct']:+.1f}% from step 100 "
              f"({r['rss_change_pct']:+.1f}% untrimmed), "
              f"resumed from {r['resumed_from']} (max diff {max(r['resume_max_diff'].values()):.1e}), "
              f"metrics once each {r['metrics_steps_once_each']}: {'PASS' if passed(r) else 'FAIL'}")
    if args.json:
        write_results(Path(args.json), results)
    if args.figure:
        draw_figure(results, Path(args.figure))
    if not all(passed(r) for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
