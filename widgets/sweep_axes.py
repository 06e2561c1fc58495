"""The axes of SweepView's parallel coordinates: a searched setting over its searched range (a
tick per value of a grid or a choice, log10 of a log-uniform setting), and a result with a place
for the trials that do not have it."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from workbench.options import MethodOptions
from workbench.studies.sweep import Dimension, SweepPlan

from ._live import esc


def sweep_axes(plan: SweepPlan, trials: pd.DataFrame) -> list[dict]:
    """The parcoords axes of ``trials`` (rows of ``read_trials``): each searched setting, then the
    metric's last value, the test split's entropy and its pass@k of the largest k."""
    labels = setting_labels([d.key for d in plan.dimensions])
    axes = [setting_axis(d, labels[d.key], trials[d.key]) for d in plan.dimensions]
    axes.append(result_axis(f"{plan.metric} (last)", trials.metric))
    top = _top_pass(trials)
    for column, label in (("entropy_mean", "entropy_mean (test, nats)"), (top, f"{top} (test)")):
        if column is not None:
            values = trials[column] if column in trials else pd.Series(np.nan, trials.index)
            axes.append(result_axis(label, values))
    return axes


def setting_axis(dimension: Dimension, label: str, values: pd.Series) -> dict:
    """A parcoords axis of a searched setting over the searched range: a tick per value of a grid
    or a choice (strings included), log10 of a loguniform setting labelled with its values."""
    if dimension.kind in ("grid", "choice"):
        categories = list(dimension.values) + [v for v in dict.fromkeys(values) if v not in dimension.values]
        return {
            "label": label,
            "values": [categories.index(v) for v in values],
            "range": [0, max(len(categories) - 1, 1)],
            "tickvals": list(range(len(categories))),
            "ticktext": [esc(value_text(v)) for v in categories],
        }
    if dimension.kind == "loguniform":
        assert dimension.low is not None and dimension.high is not None  # a range's dimension has both ends
        ticks = _log_ticks(dimension.low, dimension.high)
        return {
            "label": f"{label} (log)",
            "values": np.log10(values.astype(float)).tolist(),
            "range": [math.log10(dimension.low), math.log10(dimension.high)],
            "tickvals": np.log10(ticks).tolist(),
            "ticktext": [f"{t:g}" for t in ticks],
        }
    return {"label": label, "values": values.astype(float).tolist(), "range": [dimension.low, dimension.high]}


def result_axis(label: str, values: pd.Series) -> dict:
    """A parcoords axis of a result, ticks at round numbers; trials without one (not evaluated, no
    step yet) sit at a "none" tick below the others, so that their lines still show."""
    values = pd.to_numeric(values, errors="coerce").astype(float)
    known = values[np.isfinite(values)]
    low, high = (float(known.min()), float(known.max())) if len(known) else (0.0, 0.0)
    ticks = _round_ticks(low, high) if len(known) else []
    labels = [f"{t:.3g}" for t in ticks]
    if high == low:  # one value (or none yet): an axis around it
        low, high = low - (abs(low) / 2 or 0.5), high + (abs(high) / 2 or 0.5)
    if len(known) < len(values):
        none = low - 0.25 * (high - low)
        values, ticks, labels, low = values.where(np.isfinite(values), none), [none, *ticks], ["none", *labels], none
    return {"label": label, "values": values.tolist(), "range": [low, high], "tickvals": ticks, "ticktext": labels}


def _round_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` ticks in [low, high] at multiples of 1, 2, 2.5 or 5 times a power of ten."""
    if high <= low:
        return [low]
    power = 10.0 ** math.floor(math.log10((high - low) / (count - 1)))
    step = min((m * power for m in (1, 2, 2.5, 5, 10)), key=lambda s: abs((high - low) / s - (count - 1)))
    return [k * step for k in range(math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9) + 1)]


def _log_ticks(low: float, high: float) -> list[float]:
    """1-2-5 ticks in [low, high] (only the powers of ten when those are many), with both ends."""
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    steps = (1,) if len(decades) > 3 else (1, 2, 5)
    inside = [m * 10.0**e for e in decades for m in steps if low * (1 + 1e-9) < m * 10.0**e < high * (1 - 1e-9)]
    return [low, *inside, high]


def value_text(value) -> str:
    """A table cell: numbers to 4 significant digits, missing as "-"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _top_pass(trials: pd.DataFrame) -> str | None:
    """The evaluation's pass@k of the largest k (the sweep's eval_samples), when any trial has one."""
    columns = [c for c in trials.columns if c.startswith("pass@") and c[5:].isdigit()]
    return max(columns, key=lambda c: int(c[5:])) if columns else None


def setting_labels(keys: list[str]) -> dict[str, str]:
    """Column and axis names of the searched keys: a method option by its own name when that is
    unique (``method_options.alpha`` -> ``alpha``)."""
    short = {k: MethodOptions.key(k) or k for k in keys}
    taken = {s for s in short.values() if list(short.values()).count(s) > 1} | set(keys)
    return {k: s if s == k or s not in taken else k for k, s in short.items()}
