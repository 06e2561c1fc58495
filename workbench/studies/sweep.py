"""A hyperparameter sweep: ``workbench sweep``, a search space over RunConfig fields and method
options, each trial a workbench run directory (run on Ray Tune: ``workbench.integrations.ray_tune``).

    workbench sweep --set method=eepo --space learning_rate=loguniform:1e-4:1e-2 \\
        --space method_options.unlearn_lr=grid:0.01,0.05 --samples 2 --steps 30 --out runs/sweep

A dimension is ``KEY=KIND:VALUES``: ``grid:a,b,c`` (every value, crossed with the other grids),
``choice:a,b,c`` (one at random a trial), ``uniform:low:high``, ``loguniform:low:high`` or
``randint:low:high`` (inclusive); ``KEY=a,b,c`` is a grid. ``--samples`` random draws are taken
for each point of the grid. Each trial's settings are checked, before anything runs, by the
same declarations as a run's config (RunConfig and the method's options).

The sweep directory, which ``widgets.SweepView`` follows while the sweep runs:

    OUT/sweep.json            the plan (this module's SweepPlan)
    OUT/trials.json           every trial: name, params, status, last step and metric (the driver
                              rewrites it atomically as trials start, report and end)
    OUT/trial-000/ ...        each trial's run directory (config.yaml, metrics.jsonl, rollouts,
                              checkpoints) and, once it trained every step, its eval.json
    OUT/tune/                 Ray Tune's own experiment state (what a restart resumes from)

Trial statuses: pending, running, finished (every step, evaluated), stopped (ended early by the
scheduler, e.g. ASHA on the metric), failed (its error is in trials.json) and interrupted (the
sweep was stopped before the trial ended: running the same command again resumes it).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from workbench.options import ConfigError, MethodOptions, choice, config_field, integer, of_dataclass, text

PLAN_FILE = "sweep.json"
TRIALS_FILE = "trials.json"
EVAL_FILE = "eval.json"
TUNE_DIR = "tune"
STATUSES = ("pending", "running", "finished", "stopped", "failed", "interrupted")
KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
SCHEDULERS = ("asha", "fifo")
# fields a sweep sets itself, per trial
OWN_FIELDS = ("checkpoint_every",)


@dataclass(frozen=True)
class Dimension:
    """One searched setting: ``kind`` (one of KINDS) and its ``values`` (grid, choice) or its
    ``low`` and ``high`` (uniform, loguniform, randint: both included)."""

    key: str
    kind: str
    values: tuple = ()
    low: float | None = None
    high: float | None = None

    @classmethod
    def parse(cls, key: str, spec: str) -> Dimension:
        """``KIND:VALUES`` text (``grid:1e-3,3e-3``, ``loguniform:1e-4:1e-2``), or ``a,b,c`` for a grid."""
        from workbench import yaml12

        kind, _, rest = spec.partition(":") if spec.split(":", 1)[0] in KINDS else ("grid", "", spec)
        if kind in ("grid", "choice"):
            values = tuple(yaml12.safe_load(v) for v in rest.split(",") if v.strip())
            return cls(key, kind, values=values)
        bounds = rest.split(":")
        if len(bounds) != 2:
            raise ConfigError(f"space.{key}", spec, f"{kind}:LOW:HIGH, e.g. {kind}:1e-4:1e-2")
        low, high = (yaml12.safe_load(b) for b in bounds)
        return cls(key, kind, low=low, high=high)

    def __post_init__(self):
        label = f"space.{self.key}"
        if self.kind not in KINDS:
            raise ConfigError(label, self.kind, f"a kind among {', '.join(KINDS)}")
        if self.kind in ("grid", "choice"):
            if not self.values:
                raise ConfigError(label, self.values, f"{self.kind}:a,b,... with at least one value")
            return
        number = int if self.kind == "randint" else (int, float)
        if not all(isinstance(b, number) and not isinstance(b, bool) for b in (self.low, self.high)):
            raise ConfigError(
                label, (self.low, self.high), f"{self.kind}: two {'integers' if number is int else 'numbers'}"
            )
        if not self.low < self.high or (self.kind == "loguniform" and self.low <= 0):
            raise ConfigError(
                label,
                (self.low, self.high),
                f"{self.kind}: low < high" + (", both > 0" if self.kind == "loguniform" else ""),
            )

    @property
    def examples(self) -> tuple:
        """The values that bound what a trial can get: every listed value, or both ends."""
        return self.values if self.kind in ("grid", "choice") else (self.low, self.high)

    def describe(self) -> str:
        return (
            f"{self.kind}:{','.join(map(str, self.values))}" if self.values else f"{self.kind}:{self.low}:{self.high}"
        )


@dataclass
class SweepPlan:
    """What a sweep searches and how; written to ``OUT/sweep.json``. Each field is declared once:
    the CLI's options and the docs' table come from these declarations."""

    space: dict = field(default_factory=dict)  # KEY -> "KIND:VALUES" (see Dimension.parse)
    overrides: dict = field(default_factory=dict)  # RunConfig fields shared by every trial
    steps: int = config_field(integer(20, "training steps of a trial that is not stopped early", low=1))
    samples: int = config_field(
        integer(1, "random draws per point of the grid (trials = grid points x samples)", low=1)
    )
    metric: str = config_field(
        text(
            "reward_mean",
            "the metric the scheduler and the ranking read: a column of metrics.jsonl",
            "a metric every step records, e.g. reward_mean",
        )
    )
    mode: str = config_field(choice("max", "whether a higher or a lower metric is better", ("max", "min")))
    scheduler: str = config_field(
        choice(
            "asha",
            "asha: stop trials whose metric trails at a rung (ASHA); fifo: run every trial to the end",
            SCHEDULERS,
        )
    )
    grace_period: int = config_field(
        integer(0, "steps every trial runs before ASHA may stop it (0: a quarter of the steps)", low=0)
    )
    reduction_factor: int = config_field(integer(2, "ASHA keeps 1 in this many trials at each rung", low=2))
    eval_prompts: int = config_field(integer(16, "evaluation prompts (test split) of a finished trial", low=1))
    eval_samples: int = config_field(integer(8, "samples a prompt: pass@k up to this k", low=1))
    search_seed: int = config_field(
        integer(0, "seeds the random draws of the space (the trials' own seeds are the `seed` field)")
    )
    checkpoint_every: int = config_field(
        integer(5, "save each trial every this many steps (a restarted sweep resumes its trials from there)", low=1)
    )

    def __post_init__(self):
        for name, option in of_dataclass(SweepPlan).items():
            option.check(getattr(self, name))
        for key in self.overrides:
            if key in OWN_FIELDS:
                raise ConfigError(f"overrides.{key}", self.overrides[key], "set by the sweep itself, not an override")
        if not self.space:
            raise ConfigError("space", self.space, "at least one dimension, e.g. learning_rate=loguniform:1e-4:1e-2")
        for dimension in self.dimensions:
            self._check(dimension)
        self._check_combinations()

    @property
    def dimensions(self) -> list[Dimension]:
        return [Dimension.parse(key, spec) for key, spec in self.space.items()]

    @property
    def trials(self) -> int:
        """How many trials the sweep has: the grid's points times ``samples``."""
        return math.prod(len(d.values) for d in self.dimensions if d.kind == "grid") * self.samples

    @property
    def grace(self) -> int:
        return self.grace_period or max(1, self.steps // 4)

    def run_config(self, params: dict, threads: int | None = None):
        """A trial's RunConfig: the overrides, then its ``params`` (``method_options.X`` keys set
        one method option: ``MethodOptions.gathered``)."""
        from workbench.config import RunConfig

        overrides = json.loads(json.dumps(self.overrides))  # a copy, method_options included
        values = MethodOptions.gathered({**overrides, **params})
        values["checkpoint_every"] = self.checkpoint_every
        if threads is not None:
            values["threads"] = threads
        return RunConfig(**values)

    def _check(self, dimension: Dimension) -> None:
        """Every value that bounds the dimension, with the other dimensions at their first
        example, must make a RunConfig; the error names the dimension."""
        from workbench.config import OPTIONS

        key = dimension.key
        if key in OWN_FIELDS or key == "method_options" or (key not in OPTIONS and MethodOptions.key(key) is None):
            raise ConfigError(
                f"space.{key}",
                dimension.describe(),
                "a RunConfig field (workbench options) or method_options.NAME (workbench options --method M)",
            )
        kind = _option_of(key, self.overrides).kind
        if kind == "int" and dimension.kind in ("uniform", "loguniform"):
            raise ConfigError(
                f"space.{key}",
                dimension.describe(),
                f"integers: {key} is an integer, so randint:LOW:HIGH, grid:a,b or choice:a,b "
                f"({dimension.kind} draws fractions)",
            )
        others = {d.key: d.examples[0] for d in self.dimensions if d.key != key}
        for value in dimension.examples:
            try:
                self.run_config({**others, key: value})
            except ConfigError as error:
                raise ConfigError(
                    f"space.{key}",
                    dimension.describe(),
                    f"every value allowed ({error}); a dimension "
                    f"is KIND:VALUES with KIND one of {', '.join(KINDS)}, or a,b,c for a grid",
                ) from None

    def _check_combinations(self) -> None:
        """Every combination of the dimensions' bounding values (each grid and choice value, each
        range's two ends) must make a RunConfig too: a value can be allowed alone and not with
        another's (an odd group size for EEPO)."""
        dimensions = self.dimensions
        for values in itertools.product(*(d.examples for d in dimensions)):
            params = {d.key: value for d, value in zip(dimensions, values)}
            try:
                self.run_config(params)
            except ConfigError as error:
                together = ", ".join(f"{k}={v!r}" for k, v in params.items())
                raise ConfigError(
                    "space", together, f"a combination every trial can run; with these together: {error}"
                ) from None


def _option_of(key: str, overrides: dict):
    """The declaration of the setting ``key`` names: a RunConfig field, or a method option (the
    sweep's method's, else the first method that declares it)."""
    from workbench import methods
    from workbench.config import OPTIONS

    name = MethodOptions.key(key)
    if name is None:
        return OPTIONS[key]
    chosen = overrides.get("method", OPTIONS["method"].default)
    for method in [chosen, *methods.names()]:
        if name in methods.get(method).OPTIONS:
            return methods.get(method).OPTIONS[name]
    raise ConfigError(f"space.{key}", key, "an option of some method (workbench options --method M)")


def trial_name(trial_id: str) -> str:
    """A trial's run directory name from Ray Tune's trial id (``"3f2a1_00007"`` -> ``"trial-007"``)."""
    return f"trial-{int(trial_id.rsplit('_', 1)[-1]):03d}"


# --- reading a sweep back ---------------------------------------------------------------------
def load_plan(out: str | Path) -> SweepPlan:
    path = Path(out) / PLAN_FILE
    if not path.exists():
        raise FileNotFoundError(f"{out} is not a sweep directory: it has no {PLAN_FILE}")
    return SweepPlan(**json.loads(path.read_text()))


def read_trials(out: str | Path) -> pd.DataFrame:
    """One row per trial: name, status, step (the last reported), the metric's last value, its
    params (one column each, named by key) and, for a finished trial, its test-split evaluation
    (``pass@1`` ... ``entropy_mean``). Empty before the sweep's first trial starts."""
    out, columns = Path(out), ["name", "status", "step", "metric", "error"]
    try:
        trials = json.loads((out / TRIALS_FILE).read_text())["trials"]
    except FileNotFoundError:
        trials = []
    if not trials:
        return pd.DataFrame(columns=columns)
    rows = []
    for trial in trials:
        row = {
            "name": trial["name"],
            "status": trial["status"],
            "step": trial.get("step"),
            "metric": trial.get("metric"),
            "error": trial.get("error"),
            **trial["params"],
        }
        evaluation = out / trial["name"] / EVAL_FILE
        if evaluation.exists():
            row.update(json.loads(evaluation.read_text())["final"].get("test", {}))
        rows.append(row)
    return pd.DataFrame(rows)


def best_trials(out: str | Path, n: int = 5) -> pd.DataFrame:
    """The ``n`` best trials by the metric's last value (the plan's mode), finished trials first:
    a stopped trial's last value was taken earlier in training."""
    plan, table = load_plan(out), read_trials(out)
    table = table[table.metric.notna()]
    if table.empty:
        return table
    ranked = table.assign(_finished=table.status == "finished").sort_values(
        ["_finished", "metric"], ascending=[False, plan.mode == "min"]
    )
    return ranked.drop(columns="_finished").head(n).reset_index(drop=True)
