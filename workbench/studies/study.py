"""A multi-seed comparison of methods under one budget: ``workbench compare``.

    workbench compare --methods grpo,eepo,erpo --seeds 3 --steps 100 --out runs/study

Every (method, seed) run trains from the same embedded model with the same number of
generated responses per step (``num_prompts x num_generations`` of the shared config),
writes its own run directory ``OUT/METHOD-seedS`` and, at the end, ``eval.json``: pass@k
to ``eval_samples`` on each split, token entropy, distinct correct strategies, response
length (Policy Split in both of its modes). Runs go seed by seed, so a stopped study
already holds complete comparisons; started again with the same plan it skips finished
runs and resumes a stopped one from its last checkpoint. ``--backend ray`` runs each run as
a Ray task (``workbench.integrations.ray``); one run is ``workbench.studies.runs.run_one`` on
either backend.

:func:`summarize` reads a study back: mean and 95% confidence interval over seeds of
every final measure, and each method's relative gain over GRPO as EEPO's paper reports it,
(acc_method - acc_GRPO) / acc_GRPO of the mean pass@1.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from workbench.options import ConfigError
from workbench.studies.runs import (
    BASE,
    EVAL_FILE,
    PLAN_FILE,
    StudyPlan,
    claim_plan,
    evaluate_base,
    evaluated,
    run_one,
    steps_done,
    study_runs,
)

# two-sided 95% Student t quantiles by degrees of freedom (seeds - 1); 1.96 beyond the table
T_975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    12: 2.179,
    15: 2.131,
    20: 2.086,
    30: 2.042,
}


BACKENDS = ("serial", "ray")


def run_study(
    out: str | Path,
    plan: StudyPlan,
    progress: bool = True,
    backend: str = "serial",
    address: str | None = None,
    gpus_per_run: float = 0.0,
) -> Path:
    """Run (or resume) every run of ``plan`` into ``out``; returns ``out``.

    ``backend="serial"`` runs them one after another in this process; ``"ray"`` runs each as a
    Ray task (``workbench.integrations.ray``) on a local Ray started for the study, or on the
    cluster at ``address``, with ``gpus_per_run`` GPUs each. The directory, the resume rules and
    every ``eval.json`` are the same on both."""
    if backend not in BACKENDS:
        raise ConfigError("backend", backend, f"one of {', '.join(BACKENDS)}")
    if backend == "serial" and (address is not None or gpus_per_run):
        raise ConfigError(
            "address" if address is not None else "gpus_per_run", address or gpus_per_run, "only with backend='ray'"
        )
    out = Path(out)
    from workbench.run.store import RunStore

    study = RunStore(out)
    study.lock()  # one compare at a time in a study directory (each run also locks its own)
    try:
        claim_plan(out, plan)  # under the lock: two compares never both write a plan
        if backend == "ray":
            from workbench.integrations.ray import run_study_on_ray

            run_study_on_ray(out, plan, progress=progress, address=address, gpus_per_run=gpus_per_run)
        else:
            _run_serially(out, plan, progress)
    finally:
        study.unlock()
    return out


def _run_serially(out: Path, plan: StudyPlan, progress: bool) -> None:
    from tqdm.auto import tqdm

    runs = study_runs(plan)
    done_steps = sum(steps_done(plan.run_dir(out, m, s), plan.steps) for m, s in runs)
    bar = tqdm(total=len(runs) * plan.steps, initial=done_steps, desc="study", unit="step", disable=not progress)
    try:
        if not evaluated(out / BASE):
            bar.set_postfix_str("evaluating the base model")
            evaluate_base(out / BASE, plan)
        for method, seed in runs:
            bar.set_postfix_str(f"{method} seed {seed}")
            run_one(plan.run_dir(out, method, seed), plan, method, seed, on_step=lambda: bar.update(1))
    finally:
        bar.close()


# --- reading a study back -------------------------------------------------------------
def load_plan(out: str | Path) -> StudyPlan:
    path = Path(out) / PLAN_FILE
    if not path.exists():
        raise FileNotFoundError(f"{out} is not a study directory: it has no {PLAN_FILE}")
    return StudyPlan(**json.loads(path.read_text()))


def final_evaluations(out: str | Path, entry: str = "final") -> pd.DataFrame:
    """One row per finished run and split: method, seed, split and every final measure.

    ``entry`` is the eval.json entry read: ``"final"``, the study's own evaluation, or
    ``"latest"``, each run's last ``workbench eval`` of its checkpoints (``step-N``, the largest
    N; the base model's ``step-0``), for a larger evaluation made after the study."""
    if entry not in ("final", "latest"):
        raise ValueError(f"entry={entry!r} is not an evaluation entry; allowed: final, latest")
    out, plan = Path(out), load_plan(out)
    rows = []
    base = out / BASE / EVAL_FILE
    if base.exists():
        for split, values in _entry(json.loads(base.read_text()), entry).items():
            rows.append({"method": BASE, "seed": plan.seeds[0], "split": split, **values})
    for seed in plan.seeds:
        for method in plan.methods:
            path = plan.run_dir(out, method, seed) / EVAL_FILE
            if not path.exists():
                continue
            evaluation = json.loads(path.read_text())
            for name, key in ((method, entry), (f"{method} (HE mode)", "high_entropy")):
                if key == "high_entropy" and entry != "final":
                    continue
                for split, values in _entry(evaluation, key).items():
                    rows.append({"method": name, "seed": seed, "split": split, **values})
    return pd.DataFrame(rows)


def _entry(evaluation: dict, key: str) -> dict:
    if key != "latest":
        return evaluation.get(key, {})
    steps = [int(name[5:]) for name in evaluation if name.startswith("step-") and name[5:].isdigit()]
    return evaluation[f"step-{max(steps)}"] if steps else {}


def histories(out: str | Path) -> pd.DataFrame:
    """Every run's metrics.jsonl, with ``method`` and ``seed`` columns."""
    from workbench.studies.report import _read_metrics

    out, plan = Path(out), load_plan(out)
    frames = []
    for seed in plan.seeds:
        for method in plan.methods:
            frame = _read_metrics(plan.run_dir(out, method, seed) / "metrics.jsonl")
            if len(frame):
                frames.append(frame.assign(method=method, seed=seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def mean_ci(values) -> tuple[float, float]:
    """Mean and the half-width of its two-sided 95% Student t interval (NaN for one value)."""
    values = [float(v) for v in values if v == v]
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    df = n - 1
    t = T_975[max(k for k in T_975 if k <= df)] if df <= 30 else 1.96  # between entries: the wider one
    return mean, t * sd / math.sqrt(n)


def summarize(out: str | Path, measures: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Mean and 95% CI over seeds of each measure, per method and split, plus ``gain_vs_grpo``:
    the relative change of mean pass@1 over GRPO's on the same split (EEPO's paper)."""
    return summarize_finals(final_evaluations(out), measures)


def summarize_finals(finals: pd.DataFrame, measures: tuple[str, ...] | None = None) -> pd.DataFrame:
    """:func:`summarize` of ``final_evaluations`` rows (of one study, or of several joined)."""
    if finals.empty:
        return pd.DataFrame()
    if measures is None:
        curve = ("pass@1", f"pass@{_largest_k(finals)}")
        others = [
            c for c in finals.columns if c not in ("method", "seed", "split", "samples") and not c.startswith("pass@")
        ]
        measures = (*curve, *others)
    rows = []
    for (method, split), group in finals.groupby(["method", "split"], sort=False):
        row = {"method": method, "split": split, "seeds": len(group)}
        for measure in measures:
            row[measure], row[f"{measure} ci95"] = mean_ci(group[measure])
        rows.append(row)
    table = pd.DataFrame(rows)
    grpo = table[table.method == "grpo"].set_index("split")["pass@1"] if "grpo" in set(table.method) else None
    if grpo is not None:
        table["gain_vs_grpo"] = [
            (r["pass@1"] - grpo[r["split"]]) / grpo[r["split"]] if grpo.get(r["split"], 0) > 0 else math.nan
            for _, r in table.iterrows()
        ]
    return table


def _largest_k(finals: pd.DataFrame) -> int:
    return max(int(c[5:]) for c in finals.columns if c.startswith("pass@"))
