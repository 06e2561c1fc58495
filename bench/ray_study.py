"""The same study, serial and on Ray: wall time ratio, and Ray's own cost per run.

    python bench/ray_study.py [--methods grpo,eepo] [--seeds 2] [--steps 10] [--workers 2] [--json OUT]

Runs ``workbench compare``'s study twice into fresh directories: serially in this process with
torch on every core (the serial backend's default), then with ``--backend ray`` on a local Ray
of ``--workers`` CPUs, each run a task of one thread. The wall times include everything a user
waits for: Ray's start-up, the workers' imports and model loads, the evaluations. Then Ray's own
cost: ``ray.init`` on this machine, the first task in a fresh worker that imports the workbench
and loads the embedded model (what every run pays before its first step), and a warm no-op
task's round trip. The two studies' ``eval.json`` files are compared too (same threads: equal;
here serial has 2 threads and Ray 1, so they may differ in the last bits and then diverge).

Not a test: numbers to record in docs/benchmarks.md. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from workbench.studies.study import StudyPlan, run_study


def _time_study(out: Path, plan: StudyPlan, **backend) -> float:
    start = time.perf_counter()
    run_study(out, plan, progress=False, **backend)
    return time.perf_counter() - start


def _load_model_in_worker(model: str) -> float:
    start = time.perf_counter()
    from workbench.models.policy import Policy

    Policy.from_pretrained(model)
    return time.perf_counter() - start


def _ray_costs(workers: int, model: str) -> dict:
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, configure_logging=False, log_to_driver=False)
    init = time.perf_counter() - start
    try:
        load = ray.remote(num_cpus=1)(_load_model_in_worker)
        start = time.perf_counter()
        in_worker = ray.get(load.remote(model))
        first_task = time.perf_counter() - start
        noop = ray.remote(num_cpus=1)(lambda: None)
        ray.get(noop.remote())
        trips = []
        for _ in range(20):
            start = time.perf_counter()
            ray.get(noop.remote())
            trips.append(time.perf_counter() - start)
    finally:
        ray.shutdown()
    return {"ray_init_s": init, "first_task_s": first_task, "model_load_in_worker_s": in_worker,
            "noop_task_ms": 1000 * statistics.median(trips)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="grpo,eepo")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray (one run each)")
    parser.add_argument("--eval-prompts", type=int, default=16)
    parser.add_argument("--eval-samples", type=int, default=8)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()

    overrides = {"model": args.model}
    plan = StudyPlan(methods=args.methods.split(","), seeds=list(range(args.seeds)), steps=args.steps,
                     eval_prompts=args.eval_prompts, eval_samples=args.eval_samples, overrides=overrides)
    ray_plan = StudyPlan(**{**plan.__dict__, "overrides": {**overrides, "threads": 1}})
    runs = len(plan.methods) * len(plan.seeds)
    with tempfile.TemporaryDirectory() as tmp:
        serial = _time_study(Path(tmp) / "serial", plan)
        import ray

        ray.init(num_cpus=args.workers, include_dashboard=False, configure_logging=False, log_to_driver=False)
        ray.shutdown()  # Ray's first start on a machine unpacks files: not part of what is measured
        on_ray = _time_study(Path(tmp) / "ray", ray_plan, backend="ray")
        same = all(json.loads((Path(tmp) / "serial" / d.name / "eval.json").read_text())
                   == json.loads((d / "eval.json").read_text()) for d in (Path(tmp) / "ray").iterdir() if d.is_dir())
    costs = _ray_costs(args.workers, args.model)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "runs": runs, "steps": args.steps,
              "methods": plan.methods, "seeds": args.seeds, "workers": args.workers, "serial_s": serial,
              "ray_s": on_ray, "ratio": on_ray / serial, "same_eval_json": same, **costs}
    print(f"study of {runs} runs x {args.steps} steps ({args.methods}, {args.seeds} seeds) on {result['machine']}")
    print(f"  serial (torch on every core): {serial:7.1f} s")
    print(f"  Ray, {args.workers} workers x 1 thread:   {on_ray:7.1f} s  = {on_ray / serial:.2f}x serial")
    print(f"  Ray: init {costs['ray_init_s']:.1f} s; a run's first task (fresh worker, imports, model load) "
          f"{costs['first_task_s']:.1f} s, of which the model load {costs['model_load_in_worker_s']:.2f} s; "
          f"a warm no-op task {costs['noop_task_ms']:.1f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
