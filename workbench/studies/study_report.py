"""One offline HTML page for a study (``workbench report runs/study``).

The table gives mean and 95% confidence interval over seeds of every final measure with the
relative gain over GRPO; the figures show the seed mean (line) and the seeds' range (band)
of entropy, accuracy and strategies over steps, and the pass@k curves of each split.
"""

from __future__ import annotations

import math
from pathlib import Path

import plotly.graph_objects as go

from workbench.metrics.registry import (
    DISTINCT_CORRECT_STRATEGIES,
    DISTINCT_STRATEGIES,
    ENTROPY_MEAN,
    PASS_AT_K,
    RESPONSE_LENGTH,
    REWARD_MEAN,
    STEP,
    pass_at,
    pass_k,
)
from workbench.studies.report import COLOURS, _esc, _figure_html, _page, _rgba, _style
from workbench.studies.study import BASE, final_evaluations, histories, load_plan, summarize

OVER_STEPS = (
    (ENTROPY_MEAN, f"Token entropy ({ENTROPY_MEAN.unit})"),
    (REWARD_MEAN, "Accuracy (mean reward)"),
    (DISTINCT_STRATEGIES, "Distinct strategies per group"),
    (RESPONSE_LENGTH, f"Response length ({RESPONSE_LENGTH.unit})"),
)
TABLE = (
    (pass_at(1), "pass@1"),
    (PASS_AT_K, PASS_AT_K),
    (ENTROPY_MEAN, "entropy"),
    (DISTINCT_CORRECT_STRATEGIES, "correct strategies"),
    (RESPONSE_LENGTH, "length"),
)


def write_study_report(study_dir: str | Path, out_path: str | Path | None = None) -> Path:
    study_dir = Path(study_dir)
    plan = load_plan(study_dir)
    title = f"study: {', '.join(plan.methods)} x {len(plan.seeds)} seeds x {plan.steps} steps"
    table, finals, history = summarize(study_dir), final_evaluations(study_dir), histories(study_dir)
    colours = {m: COLOURS[i % len(COLOURS)] for i, m in enumerate([BASE, *plan.methods])}
    body = [
        f"<h1>{_esc(title)}</h1>",
        _plan_table(plan),
        "<h2>Final policies</h2>",
        _summary_table(table, plan.eval_samples),
    ]
    body += ["<h2>Over training</h2>", '<div class="grid">']
    body += [_figure_html(_over_steps(history, key, name, colours)) for key, name in OVER_STEPS]
    body += ["</div>", "<h2>pass@k</h2>", '<div class="grid">']
    body += [_figure_html(_passk(finals, split, colours)) for split in plan.splits]
    body.append("</div>")
    out = Path(out_path) if out_path else study_dir / "report.html"
    out.write_text(_page(title, "\n".join(body)), encoding="utf-8")
    return out


def _plan_table(plan) -> str:
    rows = [
        ("methods", ", ".join(plan.methods)),
        ("seeds", ", ".join(map(str, plan.seeds))),
        ("steps", plan.steps),
        ("evaluation", f"{plan.eval_prompts} prompts x {plan.eval_samples} samples on {', '.join(plan.splits)}"),
        ("shared settings", ", ".join(f"{k}={v}" for k, v in plan.overrides.items()) or "defaults"),
    ]
    return "<table>" + "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows) + "</table>"


def _summary_table(table, k: int) -> str:
    if table.empty:
        return "<p>no run has finished yet</p>"
    columns = [(key.format(k=k), label.format(k=k)) for key, label in TABLE]
    head = "".join(f"<th>{_esc(h)}</th>" for h in ["method", "split", "seeds", *(c for _, c in columns), "vs GRPO"])
    rows = []
    for _, r in table.sort_values(["split", "method"]).iterrows():
        cells = [r["method"], r["split"], int(r["seeds"])]
        cells += [_with_ci(r.get(key), r.get(f"{key} ci95")) for key, _ in columns]
        gain = r.get("gain_vs_grpo", math.nan)
        cells.append("" if gain != gain else f"{gain:+.1%}")
        rows.append("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in cells) + "</tr>")
    note = (
        "<p>mean ± half-width of the 95% Student t interval over seeds; vs GRPO: relative change of mean "
        "pass@1, (method − GRPO) / GRPO, on the same split.</p>"
    )
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>{note}"


def _with_ci(mean, half) -> str:
    if mean is None or mean != mean:
        return ""
    return f"{mean:.3f}" if half is None or half != half else f"{mean:.3f} ± {half:.3f}"


def _over_steps(history, key: str, title: str, colours: dict) -> go.Figure:
    fig = go.Figure()
    if not history.empty and key in history:
        for method, runs in history.groupby("method", sort=False):
            by_step = runs.groupby(STEP)[key]
            mean, low, high = by_step.mean(), by_step.min(), by_step.max()
            colour = colours.get(method, COLOURS[0])
            fig.add_scatter(
                x=high.index, y=high, mode="lines", line_width=0, showlegend=False, hoverinfo="skip", legendgroup=method
            )
            fig.add_scatter(
                x=low.index,
                y=low,
                mode="lines",
                line_width=0,
                fill="tonexty",
                showlegend=False,
                fillcolor=_rgba(colour, 0.15),
                hoverinfo="skip",
                legendgroup=method,
            )
            fig.add_scatter(
                x=mean.index, y=mean, mode="lines", line=dict(color=colour, width=2), name=method, legendgroup=method
            )
    fig.update_xaxes(title_text="step").update_yaxes(title_text=title)
    return _style(fig, f"{title}: seed mean, band = seeds' range")


def _passk(finals, split: str, colours: dict) -> go.Figure:
    fig = go.Figure()
    ks = []
    if not finals.empty:
        part = finals[finals.split == split]
        ks = sorted(k for c in part.columns if (k := pass_k(c)) and part[c].notna().any())
        for method, runs in part.groupby("method", sort=False):
            mean = [runs[pass_at(k)].mean() for k in ks]
            base = method.split(" (")[0]
            fig.add_scatter(
                x=ks,
                y=mean,
                mode="lines+markers",
                name=method,
                line=dict(color=colours.get(base, COLOURS[0]), dash="dot" if "(" in method else "solid"),
            )
    fig.update_xaxes(type="log", tickvals=ks, title_text="k (log scale)")
    fig.update_yaxes(title_text="pass@k (seed mean)", rangemode="tozero")
    return _style(fig, f"pass@k on {split}")
