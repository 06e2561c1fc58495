"""A behaviour fingerprint of every method, to show that a refactor changed nothing.

    python bench/fingerprint.py --out /tmp/before.json                 # on the old code
    python bench/fingerprint.py --out /tmp/after.json --compare /tmp/before.json

Runs ``--steps`` steps of each method (default all 12) on the embedded model with the default
``RunConfig`` and ``--seed``, and records, per step, every logged metric (exact float values),
a sha256 of the sampled token ids, of the token advantages and of the rewards; at the end a
sha256 of the adapter's weights. ``--compare OLD`` prints every difference against an earlier
fingerprint (the first differing step and metric per method) and exits 1 if there is one.
Bit-identical results are expected on the same machine and library versions; ``--threads``
defaults to 1 because with several threads MKL may split a reduction differently when the
machine is busy, which moves the last bits of a gradient norm from run to run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys

import torch

from workbench import RunConfig, Trainer, methods


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def exact(value):
    """A metric as JSON can hold it exactly (floats by repr; NaN as a string)."""
    if isinstance(value, float):
        return repr(value) if not math.isfinite(value) else value
    return value


def fingerprint(method: str, steps: int, seed: int, threads: int) -> dict:
    trainer = Trainer(RunConfig(method=method, seed=seed, threads=threads))
    rows = []
    for _ in range(steps):
        result = trainer.step()
        batch = trainer.last_batch
        metrics = {k: exact(v) for k, v in result.metrics.items() if k != "step_time" and not k.endswith("_s")}
        rows.append({"metrics": metrics, "ids": digest(batch.ids), "advantages": digest(batch.token_advantages),
                     "rewards": digest(batch.rewards)})
    adapter = torch.cat([p.detach().flatten() for p in trainer.policy.trainable_parameters().values()])
    return {"steps": rows, "adapter": digest(adapter)}


def differences(old: dict, new: dict) -> list[str]:
    found = []
    for method in sorted(set(old) | set(new)):
        if method not in old or method not in new:
            found.append(f"{method}: only in {'new' if method in new else 'old'}")
            continue
        for step, (a, b) in enumerate(zip(old[method]["steps"], new[method]["steps"])):
            changed = [k for k in ("ids", "advantages", "rewards") if a[k] != b[k]]
            changed += [f"{k} {a['metrics'].get(k)!r} -> {b['metrics'].get(k)!r}"
                        for k in sorted(set(a["metrics"]) | set(b["metrics"])) if a["metrics"].get(k) != b["metrics"].get(k)]
            if changed:
                found.append(f"{method} step {step}: " + "; ".join(changed[:6]))
                break
        else:
            if old[method]["adapter"] != new[method]["adapter"]:
                found.append(f"{method}: final adapter differs")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="all", help="comma-separated method names, or all")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="where to write the fingerprint (JSON)")
    parser.add_argument("--compare", help="an earlier fingerprint to compare with")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: deterministic)")
    args = parser.parse_args()
    names = methods.names() if args.methods == "all" else args.methods.split(",")
    torch.set_num_threads(args.threads)
    result = {}
    for name in names:
        result[name] = fingerprint(name, args.steps, args.seed, args.threads)
        print(f"{name}: {args.steps} steps, adapter {result[name]['adapter']}", flush=True)
    with open(args.out, "w") as f:
        json.dump({"command": vars(args), "torch": torch.__version__, "methods": result}, f, indent=1)
    if args.compare:
        with open(args.compare) as f:
            old = json.load(f)["methods"]
        found = differences({k: v for k, v in old.items() if k in result}, result)
        print("\n".join(found) if found else f"identical to {args.compare}: {len(result)} methods x {args.steps} steps")
        sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
