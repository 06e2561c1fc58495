"""How far the real model gets on reasoning-gym tasks before any training: the measurement behind
``workbench.tasks.reasoning_gym.DEFAULT_REAL_TASK`` (docs/real-tasks.json).

    WORKBENCH_CACHE=/tmp/wbcache python bench/real_tasks.py \\
        --tasks "reasoning_gym:chain_sum?max_digits=1&max_terms=2" reasoning_gym:leg_counting \\
        --num-prompts 32 --n-samples 16 --json docs/real-tasks.json

For each task: ``Trainer.evaluate("test")`` of SmolLM2-135M-Instruct (``--model``; the base
policy, its LoRA adapter untouched) at temperature 1.0 with ``--max-completion-length`` 64
tokens: pass@k (unbiased), mean token entropy, distinct answers per prompt and response
length. Prints a markdown table and writes the JSON (results plus the exact run config).
The default task is one where pass@1 is in [0.1, 0.6] and pass@16 >= 0.6: there is
something to learn and exploration can find it.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from workbench import Policy, RunConfig, Trainer, tasks
from workbench.tasks.reasoning_gym import DEFAULT_REAL_TASK


def measure(policy: Policy, spec: str, args: argparse.Namespace) -> dict:
    cfg = RunConfig(model=args.model, task=spec, max_completion_length=args.max_completion_length,
                    temperature=args.temperature, seed=args.seed)
    trainer = Trainer(cfg, policy=policy)
    started = time.time()
    result = trainer.evaluate("test", n_samples=args.n_samples, num_prompts=args.num_prompts, progress=True)
    result["seconds"] = time.time() - started
    task = trainer.task
    examples = trainer.sample_group(task.prompts("test", 2, seed=12345), 3, generator=trainer.generator(10**6, 4))
    trainer.score(examples)
    return {
        "task": spec,
        "config": getattr(task, "config", {}),
        "ood_config": task.split_config("ood") if hasattr(task, "split_config") else None,
        "result": result,
        "examples": [{"prompt": examples.problems[g], "completion": text, "answer": answer, "reward": float(reward)}
                     for g, text, answer, reward in zip(examples.group.tolist(), examples.text, examples.answers,
                                                         examples.rewards.tolist())],
    }


def table(rows: list[dict], n_samples: int) -> str:
    ks = sorted({1, min(4, n_samples), n_samples})
    lines = ["| task | config | " + " | ".join(f"pass@{k}" for k in ks)
             + " | entropy (nats) | distinct answers | response length (tokens) |",
             "|---|---|" + "---|" * (len(ks) + 3)]
    for row in rows:
        r = row["result"]
        name, _, _ = row["task"].partition("?")
        config = ", ".join(f"{k}={v}" for k, v in sorted(row["config"].items())) or "(defaults)"
        options = [p for p in row["task"].partition("?")[2].split("&") if p.startswith(("answer_format", "partial"))]
        lines.append(f"| {name} | {', '.join([config, *options])} | " + " | ".join(f"{r[f'pass@{k}']:.3f}" for k in ks)
                     + f" | {r['entropy_mean']:.3f} | {r['unique_answers']:.2f} | {r['response_length']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=[DEFAULT_REAL_TASK], help="reasoning_gym:NAME[?field=value&...]")
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--n-samples", type=int, default=16)
    parser.add_argument("--max-completion-length", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    for spec in args.tasks:  # every name checked before the model loads
        tasks.get(spec)
    policy = Policy.from_pretrained(args.model)
    rows = []
    for spec in args.tasks:
        rows.append(measure(policy, spec, args))
        r = rows[-1]["result"]
        print(f"{spec}: pass@1 {r['pass@1']:.3f}, pass@{args.n_samples} {r[f'pass@{args.n_samples}']:.3f} "
              f"({r['seconds']:.0f} s)", flush=True)
        if args.json:  # after every task, so a long run that stops keeps what it measured
            write_json(args, rows)
    print()
    print(table(rows, args.n_samples))
    if args.json:
        print(f"\nwrote {args.json}")


def write_json(args: argparse.Namespace, rows: list[dict]) -> None:
    out = {"model": args.model, "split": "test", "num_prompts": args.num_prompts, "n_samples": args.n_samples,
           "max_completion_length": args.max_completion_length, "temperature": args.temperature,
           "seed": args.seed, "default_task": DEFAULT_REAL_TASK, "torch": torch.__version__,
           "machine": platform.machine(), "tasks": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1, default=_plain) + "\n")


def _plain(value):
    if isinstance(value, tasks.Problem):
        return value.prompt
    if isinstance(value, (tuple, set)):
        return list(value)
    return str(value)


if __name__ == "__main__":
    main()
