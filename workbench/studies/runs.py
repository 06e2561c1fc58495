"""One run of a study, the same on every backend: the plan, training or resuming one
(method, seed) run and writing its ``eval.json``, and the study directory's files.

``workbench.studies.study`` runs the runs one after another; ``workbench.integrations.ray`` runs
each as a Ray task; both call :func:`run_one` and :func:`evaluate_base`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from workbench import methods
from workbench.options import ConfigError
from workbench.run.files import update_json, write_json

PLAN_FILE = "study.json"
EVAL_FILE = "eval.json"
BASE = "base"


@dataclass
class StudyPlan:
    methods: list[str]
    seeds: list[int]
    steps: int
    splits: list[str] = field(default_factory=lambda: ["test", "ood"])
    eval_prompts: int = 32
    eval_samples: int = 64
    checkpoint_every: int = 25
    overrides: dict = field(default_factory=dict)  # RunConfig fields shared by every run

    def __post_init__(self):
        from workbench import methods as method_registry

        if not self.methods:
            raise ConfigError("methods", self.methods, "at least one method")
        known = method_registry.names()
        for name in self.methods:
            if name not in known:
                raise ConfigError("methods", name, f"one of {', '.join(known)}")
        if not self.seeds:
            raise ConfigError("seeds", self.seeds, "at least one seed")
        for name in ("steps", "eval_prompts", "eval_samples"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(name, value, "an integer >= 1")
        for key in ("method", "seed", "checkpoint_every"):
            if key in self.overrides:
                raise ConfigError(f"overrides.{key}", self.overrides[key], "set by the study itself, not an override")
        for method, seed in study_runs(self):  # every run checked whole before the plan is written anywhere
            self.run_config(method, seed)

    def run_dir(self, out: Path, method: str, seed: int) -> Path:
        return out / f"{method}-seed{seed}"

    def run_config(self, method: str, seed: int, threads: int | None = None):
        """The RunConfig of the study's (``method``, ``seed``) run: the shared overrides and the study's
        own fields (``threads`` when the backend sets them)."""
        from workbench.config import RunConfig

        fixed = {"method": method, "seed": seed, "checkpoint_every": self.checkpoint_every}
        return RunConfig(**{**self.overrides, **fixed, **({"threads": threads} if threads is not None else {})})


def study_runs(plan: StudyPlan) -> list[tuple[str, int]]:
    """The (method, seed) runs in the order they start: seed by seed, so that a stopped study
    already holds complete comparisons."""
    return [(method, seed) for seed in plan.seeds for method in plan.methods]


def claim_plan(out: Path, plan, plan_file: str = PLAN_FILE, kind: str = "study") -> None:
    """Write the plan (a dataclass) to ``out/plan_file``, or check that the one already there is
    the same: a study or sweep resumes only with its own plan."""
    path = out / plan_file
    wanted = asdict(plan)
    if path.exists():
        found = json.loads(path.read_text())
        for key, value in wanted.items():
            if found.get(key) != value:
                raise ConfigError(
                    key,
                    value,
                    f"the plan of the {kind} in {out} ({key}={found.get(key)!r}): "
                    "resume it with the same plan, or choose another --out",
                )
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, wanted)


def evaluated(run_dir: Path) -> bool:
    """Whether a run (or the base model) has the study's own evaluation, eval.json's ``final``:
    what finishes it. Evaluations ``workbench eval`` adds to the file do not."""
    try:
        return "final" in json.loads((run_dir / EVAL_FILE).read_text())
    except (OSError, ValueError):
        return False


def record_evaluation(run_dir: Path, entries: dict) -> None:
    """Merge the study's evaluation into eval.json under the file's lock, so that an evaluation
    ``workbench eval`` adds at the same time (or added before) is kept."""
    from workbench.run.store import RunStore

    store = RunStore(run_dir)  # its reader names an unreadable eval.json
    update_json(run_dir / EVAL_FILE, lambda evaluations: {**evaluations, **entries}, lambda _: store.read_evaluations())


def steps_done(run_dir: Path, steps: int) -> int:
    """Steps of a run that a resume would not repeat: all when it has the study's evaluation,
    else those up to its last checkpoint."""
    if evaluated(run_dir):
        return steps
    from workbench.run.store import RunStore

    checkpoints = RunStore(run_dir).checkpoint_steps() if (run_dir / "config.yaml").exists() else []
    return min(steps, max(checkpoints, default=0))


def run_one(run_dir: Path, plan: StudyPlan, method: str, seed: int, on_step=None, threads: int | None = None) -> None:
    """Train (or resume) one run of the study to ``plan.steps`` and record its evaluation in
    ``eval.json``; nothing when it has one. ``on_step()`` after each step; ``threads``: the run's CPU threads
    when the backend sets them (a new run records them in its config)."""
    from workbench.engine.trainer import Trainer

    if evaluated(run_dir):
        return
    if (run_dir / "config.yaml").exists():
        trainer = Trainer.resume(run_dir)
    else:
        trainer = Trainer(plan.run_config(method, seed, threads), out_dir=run_dir)  # checkpointed at step 0
    if on_step is not None:
        trainer.subscribe(lambda phase: on_step() if phase.name == "metrics" else None)
    try:
        trainer.run(plan.steps - trainer.step_index, progress=False)  # saves on the way out, stopped or not
    finally:
        trainer.close()
    modes = tuple(methods.get(method).MODES)
    result = {mode: _evaluate(trainer, plan, mode) for mode in modes}
    entries = {"final": result["normal"]}
    if "high_entropy" in result:
        entries["high_entropy"] = result["high_entropy"]
    record_evaluation(run_dir, entries)


def evaluate_base(base_dir: Path, plan: StudyPlan, threads: int | None = None) -> None:
    """The untrained model's evaluation, ``base/eval.json``: the study's reference line."""
    from workbench.config import RunConfig
    from workbench.engine.trainer import Trainer

    fixed = {"seed": plan.seeds[0], **({"threads": threads} if threads is not None else {})}
    # no method trains it, so no method's options apply (they may not be GRPO's, the default)
    shared = {k: v for k, v in plan.overrides.items() if k != "method_options"}
    trainer = Trainer(RunConfig(**{**shared, **fixed}))
    base_dir.mkdir(parents=True, exist_ok=True)
    record_evaluation(base_dir, {"final": _evaluate(trainer, plan, "normal")})


def _evaluate(trainer, plan: StudyPlan, mode: str) -> dict:
    return {
        split: trainer.evaluate(split, n_samples=plan.eval_samples, num_prompts=plan.eval_prompts, mode=mode)
        for split in plan.splits
    }
