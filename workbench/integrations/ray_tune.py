"""Sweeps on Ray Tune: ``workbench sweep`` (the plan and the directory: ``workbench.studies.sweep``).

Each trial is a Tune trial whose function trains a workbench run in ``OUT/trial-NNN``, reports
every step's metrics row to Tune (so that ASHA can stop a trial whose metric trails at a rung)
and, after its last step, evaluates the test split into the trial's ``eval.json``. The driver's
callback keeps ``OUT/trials.json`` current, which is what ``widgets.SweepView`` and
``workbench.studies.sweep.read_trials`` read. A trial reserves ``threads`` CPUs (and ``gpus_per_run``
GPUs) and sets torch to that many threads. Run again with the same plan, a sweep restores Tune's
experiment from ``OUT/tune`` and each unfinished trial resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.integrations import require
from workbench.integrations.ray import ray_cluster, threads_per_run
from workbench.run.files import write_json
from workbench.studies.runs import claim_plan
from workbench.studies.sweep import PLAN_FILE, TRIALS_FILE, TUNE_DIR, SweepPlan, trial_name

FEATURE = "workbench sweep"
if TYPE_CHECKING:  # the checker sees the module itself, so tune.Callback is a class it can resolve
    from ray import tune
else:  # at run time a missing ray is a MissingExtraError that names the extra to install
    tune = require("ray.tune", "ray", FEATURE)


def run_sweep(
    out: str | Path, plan: SweepPlan, progress: bool = True, address: str | None = None, gpus_per_run: float = 0.0
) -> Path:
    """Run (or resume) the sweep ``plan`` into ``out`` on Ray Tune; returns ``out``. A sweep
    whose every trial failed raises the first trial's error."""
    from workbench.run.store import RunStore

    out = Path(out).resolve()
    lock = RunStore(out)
    lock.lock()  # one sweep at a time in a directory (each trial also locks its own)
    try:
        claim_plan(out, plan, PLAN_FILE, "sweep")  # under the lock: two sweeps never both write a plan
        with ray_cluster(address, FEATURE), _quiet_tune():
            results = _tuner(out, plan, progress, gpus_per_run).fit()
    finally:
        lock.unlock()
    errors = [result.error for result in results if result.error is not None]
    if errors and len(errors) == len(results):
        raise RuntimeError(f"every trial failed; the first: {_cause(errors[0])}")
    return out


@contextlib.contextmanager
def _quiet_tune():
    """Tune's legacy reporter, which at verbose=0 prints nothing: the progress bar and the
    trials table are the workbench's (the new one prints its configuration box at any verbosity)."""
    previous = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["RAY_AIR_NEW_OUTPUT"]
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = previous


def _tuner(out: Path, plan: SweepPlan, progress: bool, gpus_per_run: float):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    threads = threads_per_run(plan.overrides)
    trainable = tune.with_resources(
        tune.with_parameters(_trial, out=str(out), plan=plan, threads=threads), {"cpu": threads, "gpu": gpus_per_run}
    )
    recorder = TrialRecorder(out, plan, progress)
    run_config = tune.RunConfig(
        name=TUNE_DIR,
        storage_path=str(out),
        verbose=0,
        callbacks=[recorder],
        failure_config=tune.FailureConfig(max_failures=0),
    )
    if tune.Tuner.can_restore(str(out / TUNE_DIR)):
        return tune.Tuner.restore(
            str(out / TUNE_DIR), trainable, resume_unfinished=True, resume_errored=True, param_space=_param_space(plan)
        )
    scheduler = (
        ASHAScheduler(
            time_attr="training_iteration",
            max_t=plan.steps,
            grace_period=plan.grace,
            reduction_factor=plan.reduction_factor,
        )
        if plan.scheduler == "asha"
        else FIFOScheduler()
    )
    # reuse_actors: a worker that ended a trial takes the next one, instead of a fresh process
    # importing torch and loading the model again (20-40 s a trial on 2 cores)
    tune_config = tune.TuneConfig(
        metric=plan.metric,
        mode=plan.mode,
        scheduler=scheduler,
        num_samples=plan.samples,
        search_alg=BasicVariantGenerator(random_state=plan.search_seed),
        reuse_actors=True,
    )
    return tune.Tuner(trainable, param_space=_param_space(plan), tune_config=tune_config, run_config=run_config)


def _param_space(plan: SweepPlan) -> dict:
    """The plan's dimensions as Tune's search space (``randint``'s high is included here)."""
    domains = {
        "grid": lambda d: tune.grid_search(list(d.values)),
        "choice": lambda d: tune.choice(list(d.values)),
        "uniform": lambda d: tune.uniform(d.low, d.high),
        "loguniform": lambda d: tune.loguniform(d.low, d.high),
        "randint": lambda d: tune.randint(d.low, d.high + 1),
    }
    return {d.key: domains[d.kind](d) for d in plan.dimensions}


def _trial(params: dict, out: str, plan: SweepPlan, threads: int) -> None:
    """One trial, in a Ray worker: train (or resume) its run directory, report every step."""
    import torch

    from workbench.engine.trainer import Trainer
    from workbench.studies.runs import record_evaluation

    torch.set_num_threads(threads)
    run_dir = Path(out) / trial_name(tune.get_context().get_trial_id())
    params = {key: params[key] for key in plan.space}
    if (run_dir / "config.yaml").exists():
        trainer = Trainer.resume(run_dir)
    else:
        trainer = Trainer(plan.run_config(params, threads), out_dir=run_dir)
    try:
        while trainer.step_index < plan.steps:
            row = trainer.step().metrics
            if plan.metric not in row:
                from workbench.options import ConfigError

                raise ConfigError(
                    "metric",
                    plan.metric,
                    "a metric every step records: one of "
                    + ", ".join(sorted(k for k, v in row.items() if isinstance(v, (int, float)))),
                )
            report = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if trainer.step_index == plan.steps:  # the last step: saved and evaluated before Tune hears of it
                trainer.save_checkpoint()
                evaluation = trainer.evaluate("test", n_samples=plan.eval_samples, num_prompts=plan.eval_prompts)
                record_evaluation(run_dir, {"final": {"test": evaluation}})
            tune.report(report)
    finally:
        trainer.close()


class TrialRecorder(tune.Callback):
    """A Tune callback in the driver: ``OUT/trials.json`` rewritten on every trial event (at most
    once a second while nothing changes), and a progress bar over all steps of all trials."""

    def __init__(self, out: Path, plan: SweepPlan, progress: bool):
        self.out, self.plan, self.progress = out, plan, progress
        self._load()

    def _load(self) -> None:
        """Start from the trials the file already holds (a restarted sweep keeps its history)."""
        try:
            trials = json.loads((self.out / TRIALS_FILE).read_text())["trials"]
        except FileNotFoundError:
            trials = []
        self.trials: dict[str, dict] = {t["name"]: t for t in trials}
        self._bar, self._written = None, 0.0

    def __getstate__(self):  # Tune saves its callbacks with the experiment: the file is the state
        return {"out": self.out, "plan": self.plan, "progress": self.progress}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._load()

    @property
    def bar(self):
        if self._bar is None:
            from tqdm.auto import tqdm

            done = sum(t["step"] + 1 for t in self.trials.values() if t["step"] is not None)
            self._bar = tqdm(
                total=self.plan.trials * self.plan.steps,
                initial=done,
                desc="sweep",
                unit="step",
                disable=not self.progress,
            )
        return self._bar

    def _entry(self, trial) -> dict:
        name = trial_name(trial.trial_id)
        entry = self.trials.setdefault(
            name,
            {
                "name": name,
                "params": {k: trial.config.get(k) for k in self.plan.space},
                "status": "pending",
                "step": None,
                "metric": None,
                "error": None,
            },
        )
        return entry

    def on_step_begin(self, iteration, trials, **info):
        for trial in trials:
            self._entry(trial)
        if time.monotonic() - self._written > 1.0:
            self._write()

    def on_trial_start(self, iteration, trials, trial, **info):
        self._entry(trial)["status"] = "running"
        self._write()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        bar, entry = self.bar, self._entry(trial)  # the bar first: it starts from the steps already recorded
        entry["step"] = int(result["step"])
        value = result.get(self.plan.metric)
        entry["metric"] = float(value) if value is not None and math.isfinite(value) else None
        bar.update(1)
        bar.set_postfix_str(f"{entry['name']} {self.plan.metric}={value:.3g}" if entry["metric"] is not None else "")
        self._write()

    def on_trial_complete(self, iteration, trials, trial, **info):
        entry = self._entry(trial)
        finished = entry["step"] is not None and entry["step"] + 1 >= self.plan.steps
        entry["status"] = "finished" if finished else "stopped"
        if not finished:  # the steps it will not take leave the bar's total
            self.bar.total -= self.plan.steps - (entry["step"] + 1 if entry["step"] is not None else 0)
            self.bar.refresh()
        self._write()

    def on_trial_error(self, iteration, trials, trial, **info):
        entry = self._entry(trial)
        entry["status"], entry["error"] = "failed", _cause(_error_text(trial) or "failed")
        self._write()

    def on_experiment_end(self, trials, **info):
        for entry in self.trials.values():
            if entry["status"] in ("pending", "running"):  # the sweep was stopped: they go on when it is run again
                entry["status"] = "interrupted"
        self._write()
        self.bar.close()

    def _write(self) -> None:
        write_json(
            self.out / TRIALS_FILE,
            {"updated": time.time(), "trials": sorted(self.trials.values(), key=lambda t: t["name"])},
        )
        self._written = time.monotonic()


def _error_text(trial) -> str | None:
    """The trial's error as Tune wrote it: in the trial's local error file at once (``get_error``
    reads the synced copy in storage, which may not be there yet when the callback runs)."""
    with contextlib.suppress(OSError, TypeError, AttributeError):
        return Path(trial.error_file).read_text()
    return trial.get_error()


def _cause(error) -> str:
    """A trial's error in one line: the last line of its traceback (the worker's exception)."""
    text = str(getattr(error, "cause", None) or error).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return " ".join((lines[-1] if lines else text).split())[:500]
