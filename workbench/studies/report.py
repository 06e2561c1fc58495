"""A self-contained offline HTML report of one run, or of several runs overlaid.

The page is a single file with plotly.js inlined once, so it opens with no network.
Everything the model wrote (prompts, completions, tokens, answers, strategies) is
untrusted and passes through ``html.escape`` before it reaches the page.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from workbench import yaml12
from workbench.metrics import registry
from workbench.metrics.entropy import HIGH_ENTROPY_THRESHOLD
from workbench.metrics.registry import (
    ACCURACY,
    CLIP_FRACTION,
    DISTINCT_CORRECT_STRATEGIES,
    DISTINCT_STRATEGIES,
    ENTROPY_AT_PIVOTS,
    ENTROPY_COEF,
    ENTROPY_ELSEWHERE,
    ENTROPY_MEAN,
    ENTROPY_P50,
    ENTROPY_P95,
    FRAC_REWARD_ZERO_STD,
    GROUPS,
    HIGH_ENTROPY_TOKEN_FRACTION,
    KL,
    RESPONSE_LENGTH,
    REWARD_MEAN,
    SAMPLING_LOGP_DIFFERENCE_MAX,
    SAMPLING_LOGP_DIFFERENCE_MEAN,
    STEP,
    UNIQUE_ANSWERS,
)
from workbench.run.store import RunStore
from workbench.studies.report_rollouts import ROLLOUT_CSS, _entropy_legend, _samples
from workbench.studies.report_rollouts import (
    rollouts_html as rollouts_html,  # public: a notebook cell draws rollouts with it
)
from workbench.studies.report_text import _as_float, _esc, _fmt

COLOURS = qualitative.Plotly
ROLLING_AFTER = 20  # steps; shorter runs are readable without smoothing
PAGE_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td.diff{font-weight:bold;background:#fff7e0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}th{background:#f4f4f4}
/* auto-fill, not auto-fit: a lone first figure must not draw at full width and then be squeezed */
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:12px}.grid>div{min-width:0}
pre{white-space:pre-wrap;font-size:12px;margin:4px 0}
"""


def write_report(run_dirs: str | Path | list, out_path: str | Path | None = None, title: str | None = None) -> Path:
    """Write the report and return its path (RUN_DIR/report.html, or comparison.html in the common parent)."""
    dirs = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(d) for d in run_dirs]
    if not dirs:
        raise ValueError("write_report needs at least one run directory")
    if missing := [str(d) for d in dirs if not d.is_dir()]:
        raise FileNotFoundError(f"not a run directory: {', '.join(missing)}")
    runs = [_load_run(d, name) for d, name in zip(dirs, _run_names(dirs))]
    if out_path is None:
        parent = Path(os.path.commonpath([d.resolve() for d in dirs]))
        out_path = dirs[0] / "report.html" if len(dirs) == 1 else parent / "comparison.html"
    title = title or (runs[0]["name"] if len(runs) == 1 else "comparison: " + ", ".join(r["name"] for r in runs))
    body = [f"<h1>{_esc(title)}</h1>", "<h2>Configuration</h2>", _config_table(runs)]
    body += ["<h2>Training</h2>", '<div class="grid">', *map(_figure_html, _figures(runs)), "</div>"]
    body += [*_eval_section(runs), "<h2>Sample rollouts</h2>", _entropy_legend()]
    body += [_samples(r, len(runs) > 1) for r in runs]
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_page(title, "\n".join(body)), encoding="utf-8")
    return out


# --- loading ------------------------------------------------------------------------
def _run_names(dirs: list[Path]) -> list[str]:
    names = [d.resolve().name for d in dirs]
    # two runs called "run" in different folders must still be told apart in the legend
    return names if len(set(names)) == len(names) else [f"{d.resolve().parent.name}/{n}" for d, n in zip(dirs, names)]


def _load_run(d: Path, name: str) -> dict:
    config_path, eval_path = d / "config.yaml", d / "eval.json"
    config = yaml12.safe_load(config_path.read_text()) if config_path.exists() else {}
    evals = json.loads(eval_path.read_text()) if eval_path.exists() else {}
    steps = {int(p.stem[5:]): p for p in (d / "rollouts").glob("step-*.parquet") if p.stem[5:].isdigit()}
    backend = RunStore(d).backend()
    config = config if isinstance(config, dict) else {}
    if backend:  # a run TRL trained: say so beside its config
        processes = backend.get("processes", 1)
        config = {"backend": f"{backend['backend']} · {processes} process{'es' if processes > 1 else ''}", **config}
    return {
        "name": name,
        "config": config,
        "metrics": _read_metrics(d / "metrics.jsonl"),
        "eval": evals if isinstance(evals, dict) else {},
        "rollouts": steps[max(steps)] if steps else None,
    }


def _read_metrics(path: Path) -> pd.DataFrame:
    """A run's metrics as resume reads them (damaged lines skipped with a warning naming them)."""
    rows = RunStore(path.parent).read_metrics()
    frame = pd.DataFrame(rows)
    if STEP not in frame:
        return pd.DataFrame({STEP: []})
    # nulls, "inf" strings and unknown method-specific values all become NaN gaps in a line
    frame = frame.apply(lambda col: col.map(_as_float))
    return frame.dropna(subset=[STEP]).sort_values(STEP)


# --- figures ------------------------------------------------------------------------
def _figures(runs: list[dict]) -> list[go.Figure]:
    """The panels every run has, then one per method group (``registry.method_groups``) whose
    metrics some run recorded."""
    solid, dash, dot = "solid", "dash", "dot"
    reward = _panel(
        runs,
        GROUPS["reward"].title,
        "reward · fraction",
        [
            (REWARD_MEAN, "reward mean", solid),
            (ACCURACY, "accuracy", dot),
            (FRAC_REWARD_ZERO_STD, "groups with no reward spread", dash),
        ],
        rolling=REWARD_MEAN,
    )
    entropy = _panel(
        runs,
        f"{GROUPS['entropy'].title} (mean, p50–p95 band)",
        _axis("token entropy", ENTROPY_MEAN),
        [(ENTROPY_MEAN, "entropy mean", solid)],
        band=(ENTROPY_P50, ENTROPY_P95),
    )
    diversity = _panel(
        runs,
        GROUPS["diversity"].title,
        GROUPS["diversity"].unit,
        [
            (DISTINCT_STRATEGIES, DISTINCT_STRATEGIES.label, solid),
            (DISTINCT_CORRECT_STRATEGIES, DISTINCT_CORRECT_STRATEGIES.label, dash),
            (UNIQUE_ANSWERS, UNIQUE_ANSWERS.label, dot),
        ],
    )
    length = _panel(
        runs, GROUPS["length"].title, _axis("response length", RESPONSE_LENGTH), [(RESPONSE_LENGTH, "length", solid)]
    )
    pivots = _panel(
        runs,
        "Entropy at pivots vs elsewhere",
        _axis("token entropy", ENTROPY_AT_PIVOTS),
        [(ENTROPY_AT_PIVOTS, "at pivots", solid), (ENTROPY_ELSEWHERE, "elsewhere", dash)],
    )
    figures = [reward, entropy, _kl_clip(runs), diversity, length, pivots, *_signal_panels(runs)]
    for group in registry.method_groups():
        metrics = [m for m in registry.panel_metrics(group.name) if any(m in r["metrics"] for r in runs)]
        if metrics:
            dashes = (solid, dash, dot, "dashdot")
            figures.append(
                _panel(
                    runs,
                    group.title,
                    group.unit,
                    [(m, m.label, dashes[i % len(dashes)]) for i, m in enumerate(metrics)],
                )
            )
    return figures


def _signal_panels(runs: list[dict]) -> list[go.Figure]:
    """The share of high-entropy tokens, the sampler against the training pass, and the entropy
    coefficient where some run's changed (a method steered it)."""
    figures = [
        _panel(
            runs,
            "High-entropy tokens",
            HIGH_ENTROPY_TOKEN_FRACTION.unit,
            [(HIGH_ENTROPY_TOKEN_FRACTION, f"share above {HIGH_ENTROPY_THRESHOLD} nats", "solid")],
        ),
        _panel(
            runs,
            GROUPS["sampling"].title,
            _axis("|training pass - sampler| log-prob", SAMPLING_LOGP_DIFFERENCE_MEAN),
            [(SAMPLING_LOGP_DIFFERENCE_MEAN, "mean", "solid"), (SAMPLING_LOGP_DIFFERENCE_MAX, "max", "dot")],
        ),
    ]
    if any(r["metrics"].get(ENTROPY_COEF, pd.Series(dtype=float)).nunique() > 1 for r in runs):
        figures.append(
            _panel(runs, "The entropy coefficient the loss used", "", [(ENTROPY_COEF, "entropy_coef", "solid")])
        )
    return figures


def _axis(name: str, metric: registry.Metric) -> str:
    return f"{name} ({metric.unit})"


def _panel(runs, title, ylabel, series, rolling=None, band=None, fig=None, row=None) -> go.Figure:
    fig, pos = fig or go.Figure(), (dict(row=row, col=1) if row else {})
    for i, run in enumerate(runs):
        m, colour, group = run["metrics"], COLOURS[i % len(COLOURS)], dict(legendgroup=run["name"], **pos)
        if band and all(c in m for c in band):
            b = m.dropna(subset=list(band))
            fig.add_scatter(
                x=b[STEP], y=b[band[1]], mode="lines", line_width=0, showlegend=False, hoverinfo="skip", **group
            )
            fig.add_scatter(
                x=b[STEP],
                y=b[band[0]],
                mode="lines",
                line_width=0,
                fill="tonexty",
                fillcolor=_rgba(colour, 0.2),
                name=_label(runs, run, "p50–p95"),
                **group,
            )
        for col, name, dash in series:
            if col in m and m[col].notna().any():
                fig.add_scatter(
                    x=m[STEP],
                    y=m[col],
                    mode="lines+markers",
                    marker_size=3,
                    line=dict(color=colour, dash=dash, width=1.5),
                    name=_label(runs, run, name),
                    **group,
                )
        if rolling and rolling in m and len(m) > ROLLING_AFTER:
            smooth = m[rolling].rolling(max(5, len(m) // 10), min_periods=1).mean()
            fig.add_scatter(
                x=m[STEP],
                y=smooth,
                mode="lines",
                line=dict(color=colour, width=3),
                opacity=0.6,
                name=_label(runs, run, "rolling mean"),
                **group,
            )
    fig.update_yaxes(title_text=ylabel, **pos)
    if row:
        return fig
    return _style(fig.update_xaxes(title_text="step"), title)


def _kl_clip(runs: list[dict]) -> go.Figure:
    # KL and clip fraction live on different scales, so they get stacked subplots
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08)
    _panel(runs, "", _axis("KL to reference", KL), [(KL, "KL", "solid")], fig=fig, row=1)
    _panel(runs, "", CLIP_FRACTION.label, [(CLIP_FRACTION, CLIP_FRACTION.label, "dash")], fig=fig, row=2)
    fig.update_yaxes(rangemode="tozero").update_xaxes(title_text="step", row=2, col=1)
    return _style(fig, "KL to reference and clip fraction")


def _style(fig: go.Figure, title: str) -> go.Figure:
    fig.update_layout(
        title=title, template="plotly_white", height=380, margin=dict(l=60, r=20, t=50, b=40), legend=dict(font_size=10)
    )
    if not fig.data:
        fig.add_annotation(text="no data recorded", showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    return fig


def _label(runs: list[dict], run: dict, series: str) -> str:
    """A legend entry; plotly renders a little HTML in legends, so a run's name is escaped."""
    return series if len(runs) == 1 else f"{_esc(run['name'])} · {series}"


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _figure_html(fig: go.Figure) -> str:
    # the library is inlined once in <head>; each figure is a bare fragment
    return pio.to_html(
        fig,
        include_plotlyjs=False,
        full_html=False,
        default_height="380px",
        config={"displaylogo": False, "responsive": True},
    )


# --- tables and evaluation ---------------------------------------------------------
def _config_table(runs: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in runs for k in r["config"]))
    head = "".join(f"<th>{_esc(r['name'])}</th>" for r in runs)
    rows = []
    for key in keys:
        values = [str(r["config"].get(key, "")) for r in runs]
        # in a comparison, the settings that differ between runs are what the reader looks for
        cls = ' class="diff"' if len(set(values)) > 1 else ""
        rows.append(f"<tr><th>{_esc(key)}</th>" + "".join(f"<td{cls}>{_esc(v)}</td>" for v in values) + "</tr>")
    return f"<table><tr><th>setting</th>{head}</tr>{''.join(rows)}</table>" if keys else "<p>no config.yaml</p>"


def _eval_rows(runs: list[dict]) -> list[tuple[str, str, str, dict]]:
    """(run, stage, split, metrics) for every evaluation recorded in eval.json."""
    return [
        (r["name"], stage, split, scores)
        for r in runs
        for stage, splits in r["eval"].items()
        if isinstance(splits, dict)
        for split, scores in splits.items()
        if isinstance(scores, dict)
    ]


def _eval_section(runs: list[dict]) -> list[str]:
    rows = _eval_rows(runs)
    if not rows:
        return []
    cols = list(dict.fromkeys(k for *_, scores in rows for k in scores))
    head = "".join(f"<th>{_esc(c)}</th>" for c in ["run", "stage", "split", *cols])
    body = "".join(
        f"<tr><td>{_esc(n)}</td><td>{_esc(st)}</td><td>{_esc(sp)}</td>"
        + "".join(f"<td>{_fmt(s.get(c))}</td>" for c in cols)
        + "</tr>"
        for n, st, sp, s in rows
    )
    return ["<h2>Evaluation</h2>", f"<table><tr>{head}</tr>{body}</table>", _figure_html(_passk_figure(runs, rows))]


def _passk_figure(runs: list[dict], rows) -> go.Figure:
    fig, colour = go.Figure(), {r["name"]: COLOURS[i % len(COLOURS)] for i, r in enumerate(runs)}
    ks: set[int] = set()  # every k any curve has, for the axis ticks
    for name, stage, split, scores in rows:
        curve = [(registry.pass_k(key), value) for key, value in scores.items()]
        points = sorted((k, _as_float(v)) for k, v in curve if k)
        ks.update(k for k, _ in points)
        if points:
            fig.add_scatter(
                x=[k for k, _ in points],
                y=[v for _, v in points],
                mode="lines+markers",
                line=dict(color=colour[name], dash="solid" if stage == "final" else "dot"),
                name=_label(runs, {"name": name}, f"{stage} · {split}"),
            )
    fig.update_xaxes(type="log", tickvals=sorted(ks), title_text="k (samples per problem, log scale)")
    fig.update_yaxes(title_text="pass@k (fraction of problems)", rangemode="tozero")
    return _style(fig, "pass@k, base vs final")


# --- page ---------------------------------------------------------------------------
def _page(title: str, body: str) -> str:
    # the page draws no geo maps; moving plotly's unused topojson default off the CDN keeps it fully offline
    library = get_plotlyjs().replace("https://cdn.plot.ly/un/", "topojson/")
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{PAGE_CSS}{ROLLOUT_CSS}</style>\n"
        "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>\n"
        f"<script>{library}</script>\n</head><body>\n{body}\n</body></html>\n"
    )
