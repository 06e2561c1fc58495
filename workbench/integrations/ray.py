"""Studies on Ray: every (method, seed) run of ``workbench compare --backend ray`` is a Ray task.

    workbench compare --backend ray --methods grpo,eepo --seeds 3 --steps 100 --out runs/study
    workbench compare --backend ray --address ray://head:10001 --gpus-per-run 1 ...

A task gets its plan and run directory, never a model: it loads the model itself (the embedded
one and SmolLM2 from their packages, others by name or path), trains with ``run_one`` exactly as
the serial backend does and writes into the study directory, so every node must see that
directory (one machine, or a shared filesystem). Each task reserves ``threads`` CPUs (the plan's
``threads`` override, 1 when it has none) and sets torch to that many threads, so that two runs
on a 2-core machine use a core each instead of fighting over both.

The driver polls the run directories for the progress bar (the same files every widget reads),
keeps the other runs going when one fails and reports the failures at the end; Ctrl-C cancels
the tasks, which save themselves on the way out, so running the command again resumes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from workbench.integrations import require
from workbench.options import ConfigError
from workbench.studies.runs import BASE, StudyPlan, evaluate_base, evaluated, run_one, steps_done, study_runs

POLL_SECONDS = 1.0


def threads_per_run(overrides: dict) -> int:
    """CPU threads of each run, and the CPUs its task reserves: the plan's ``threads``, or 1 when
    it has none or 0 ("all cores" would oversubscribe a machine that runs several at once)."""
    return int(overrides.get("threads") or 1)


@contextlib.contextmanager
def ray_cluster(address: str | None = None, feature: str = "--backend ray") -> Iterator[ModuleType]:
    """Ray, connected: to the cluster at ``address``, to the Ray this process already joined, or
    to a local one started here on every core (and shut down on leaving)."""
    ray = require("ray", "ray", feature)
    if ray.is_initialized():
        yield ray
        return
    if address is not None:
        check_address(address)
    ray.init(
        address=address,
        include_dashboard=False,
        logging_level=logging.WARNING,
        configure_logging=False,
        log_to_driver=False,
    )  # a run's errors come back with its task; its logs are in Ray's session dir
    try:
        yield ray
    finally:
        ray.shutdown()


def check_address(address: str, seconds: float = 5.0) -> None:
    """A ConfigError within ``seconds`` when nothing answers at a cluster ``address`` (``HOST:PORT``, or
    ``ray://HOST:PORT`` for Ray's client, which needs ``ray[client]``), instead of Ray's minutes of
    retries; ``auto`` (the cluster this machine joined) is Ray's to find."""
    import importlib.util
    import socket

    if address == "auto":
        return
    client = address.startswith("ray://")
    if client and importlib.util.find_spec("grpc") is None:
        raise ConfigError(
            "address", address, "a HOST:PORT address: ray:// needs Ray's client, pip install 'ray[client]'"
        )
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError("address", address, "HOST:PORT or ray://HOST:PORT, e.g. ray://head:10001")
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
    except OSError as error:
        raise ConfigError(
            "address",
            address,
            f"the address of a running Ray cluster: nothing answers at {host}:{port} "
            f"({error.strerror or error}); start one there (ray start --head) or leave --address out",
        ) from None


def _study_task(run_dir: str, plan_fields: dict, run: tuple[str, int] | None, threads: int) -> str:
    """One run of the study, ``run`` = (method, seed), or the base model's evaluation when ``run``
    is None, in a Ray worker. The plan travels as its fields (``asdict``)."""
    import torch

    torch.set_num_threads(threads)
    plan = StudyPlan(**plan_fields)
    if run is None:
        evaluate_base(Path(run_dir), plan, threads=threads)
    else:
        method, seed = run
        run_one(Path(run_dir), plan, method, seed, threads=threads)
    return run_dir


def run_study_on_ray(
    out: Path, plan: StudyPlan, progress: bool = True, address: str | None = None, gpus_per_run: float = 0.0
) -> None:
    """Every unfinished run of ``plan`` (and the base evaluation) as a Ray task; returns when all
    have ended, raising a RuntimeError that names each failed run after the others finished."""
    from dataclasses import asdict

    from tqdm.auto import tqdm

    out, threads = out.resolve(), threads_per_run(plan.overrides)  # workers may start elsewhere
    runs = [(plan.run_dir(out, m, s), m, s) for m, s in study_runs(plan)]
    with ray_cluster(address) as ray:
        task = ray.remote(num_cpus=threads, num_gpus=gpus_per_run, max_retries=0)(_study_task)
        pending = {}
        if not evaluated(out / BASE):
            pending[task.remote(str(out / BASE), asdict(plan), None, threads)] = "base"
        for run_dir, method, seed in runs:
            if not evaluated(run_dir):
                pending[task.remote(str(run_dir), asdict(plan), (method, seed), threads)] = run_dir.name
        bar = tqdm(
            total=len(runs) * plan.steps, desc=f"study on Ray ({threads} CPU/run)", unit="step", disable=not progress
        )
        failures = []
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
                for ref in ready:
                    name = pending.pop(ref)
                    try:
                        ray.get(ref)
                    except Exception as error:  # the others go on; this one is named at the end
                        failures.append(f"{name}: {_cause(error)}")
                bar.n = sum(_steps_recorded(run_dir, plan.steps) for run_dir, _, _ in runs)
                bar.set_postfix_str(f"{len(pending)} task{'s' * (len(pending) != 1)} left")
                bar.refresh()
        except BaseException:  # Ctrl-C: the runs save themselves on the way out and resume next time
            for ref in pending:
                ray.cancel(ref)
            _wait_for(ray, list(pending))
            raise
        finally:
            bar.close()
    if failures:
        raise RuntimeError(f"{len(failures)} of the study's runs failed (the others are saved): " + "; ".join(failures))


def _steps_recorded(run_dir: Path, steps: int) -> int:
    """Steps a run has written to its metrics so far (a cheap line count, for the progress bar)."""
    if evaluated(run_dir):
        return steps
    try:
        with open(run_dir / "metrics.jsonl", "rb") as lines:
            return min(steps, sum(1 for _ in lines))
    except FileNotFoundError:
        return steps_done(run_dir, steps)


def _wait_for(ray, refs: list, seconds: float = 60.0) -> None:
    """Give cancelled tasks the time to save themselves (their KeyboardInterrupt runs the
    trainer's save-on-the-way-out) before Ray is shut down."""
    deadline = time.monotonic() + seconds
    while refs and time.monotonic() < deadline:
        _, refs = ray.wait(refs, num_returns=len(refs), timeout=1.0)


def _cause(error: BaseException) -> str:
    """The worker's own exception, in one line, out of Ray's wrapper."""
    cause = getattr(error, "cause", None) or error
    return " ".join(f"{type(cause).__name__}: {cause}".split())[:500]
