"""TRL's GRPOTrainer and the workbench's GRPO on identical work, side by side.

    python bench/vs_trl.py [--steps 8] [--warmup 2] [--length 32]   (needs the `bench` extra: trl)
    python bench/vs_trl.py --model smollm2-135m --prompts 4 --generations 4 --length 48 --steps 5 --warmup 2

Same model and tokenizer (``--model``: tiny, smollm2-135m or a directory), the same prompts in
the same order (``--task``; a chat model's go through its chat template on both sides: TRL gets
them as conversations), ``--prompts`` x ``--generations`` completions a step of exactly
``--length`` tokens (EOS suppressed on both sides: TRL by ``min_new_tokens``, the workbench by
an EOS id no token has), LoRA r=8 / alpha=16 on all linear layers, one update per batch,
beta=0, the DAPO loss, learning rate 2e-3, temperature 1, on ``--threads`` CPU threads in
``--precision`` (auto: the workbench's measured choice on this device, TRL with ``bf16=True`` where
it is bfloat16).
TRL runs on its HF-generate path with gradient checkpointing off (its default is on; the
workbench's is off) and its own telemetry (entropy logging); the workbench with all of its
telemetry on (entropy, top-5 alternatives, pivots, KL to the reference); and the workbench's
GRPO on TRL (``workbench-trl``: TRL's step plus a scoring pass for the telemetry, rollouts written).

Each system runs in a fresh child process (so its peak resident memory is its own). Prints,
per system, the median step time over ``--steps`` steps after ``--warmup`` (and its sampling
part), generated tokens a step and peak RSS; then the ratios workbench / TRL of step time
(target <= 0.5x) and of peak RSS (target <= 0.7x). ``--json OUT`` also writes them, with
every step's time.
"""

from __future__ import annotations

import argparse

import harness


def main() -> None:
    parser = harness.add_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]),
                              prompts=8, generations=8, length=32, steps=8, warmup=2, threads=2)
    parser.add_argument("--systems", default="trl,workbench,workbench-trl")
    args = harness.resolve(parser.parse_args())
    import trl

    setting = harness.setting(args)
    print(f"trl {trl.__version__}; {harness.describe(args)}, exactly {args.length} tokens each; "
          f"median of {args.steps} steps after {args.warmup} warm-up, {args.threads} threads, "
          f"{setting.precision} (TRL bf16={setting.bf16}); CPU {harness.cpu_features()}")
    results = {}
    targets = {"trl": harness.run_trl, "workbench": harness.run_workbench, "workbench-trl": harness.run_workbench_trl}
    for name in args.systems.split(","):
        target = targets[name]
        r = results[name] = harness.summary(harness.in_child(target, setting), args.warmup,
                                            args.prompts * args.generations * args.length)
        phases = ", ".join(f"{p} {t:.3f}" for p, t in r.get("phases_s", {"sample": r["sampling_s"]}).items())
        print(f"{name:>9}: median step {r['median_s']:.3f} s (min {r['min_s']:.3f}, max {r['max_s']:.3f}; {phases}), "
              f"{r['tokens']:.0f} generated tokens/step, peak RSS {r['peak_rss_mb']:.0f} MB")
    if "trl" in results and not results["trl"]["same_prompts"]:
        print("warning: TRL's prompts (their order or token ids) differ from the workbench's")
    if "trl" in results and results["trl"].get("gradient_checkpointing"):
        print("warning: TRL ran with gradient checkpointing on")
    if {"trl", "workbench"} <= set(results):
        results["step_ratio"] = results["workbench"]["median_s"] / results["trl"]["median_s"]
        results["rss_ratio"] = results["workbench"]["peak_rss_mb"] / results["trl"]["peak_rss_mb"]
        print(f"workbench / trl: step {results['step_ratio']:.2f}x (target <= 0.5x), "
              f"peak RSS {results['rss_ratio']:.2f}x (target <= 0.7x)")
    if {"trl", "workbench-trl"} <= set(results):
        results["trl_backend_ratio"] = results["workbench-trl"]["median_s"] / results["trl"]["median_s"]
        print(f"workbench on trl / trl: step {results['trl_backend_ratio']:.2f}x (the telemetry's cost; "
              "target <= 1.1x)")
    results["precision"] = setting.precision
    harness.write_json(args.json, args, results)


if __name__ == "__main__":
    main()
