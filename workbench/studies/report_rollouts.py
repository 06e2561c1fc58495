"""The sample-rollouts section of the HTML report: prompts with their completions as
entropy-coloured token strips. All model text is escaped before it reaches the page."""

from __future__ import annotations

import math

import pandas as pd

from workbench.studies.report_text import _as_float, _esc, _fmt

SAMPLE_PROMPTS, SAMPLE_COMPLETIONS = 3, 4
PIVOT_OUTLINE = "#1f4e9c"
ORANGE = (255, 140, 0)
ENTROPY_SCALE = 2.0  # nats at full orange; fixed so colours compare across runs and reports
# Only class selectors, so the rollouts view can be embedded in a notebook without restyling it.
ROLLOUT_CSS = """
.prompt{background:#f6f6f6;padding:8px;white-space:pre-wrap;font-size:13px}
.completion{margin:10px 0 18px 16px}.meta{font-size:13px;color:#555}
.completion pre{white-space:pre-wrap;font-size:12px;margin:4px 0}
.strip{font-family:monospace;font-size:12px;line-height:1.9;white-space:pre-wrap}
.strip span{padding:1px 1px;margin:0 1px;border-radius:2px}
.legend{display:inline-block;width:160px;height:12px;vertical-align:middle;border:1px solid #ccc}
"""


def _samples(run: dict, heading: bool) -> str:
    parts = [f"<h3>{_esc(run['name'])}</h3>"] if heading else []
    if run["rollouts"] is None:
        return "".join(parts) + "<p>no rollouts recorded</p>"
    parts.append(f'<p class="meta">from {_esc(run["rollouts"].name)}, the last rollouts file</p>')
    parts.append(rollouts_html(pd.read_parquet(run["rollouts"]), standalone=False))
    return "\n".join(parts)


def rollouts_html(
    frame: pd.DataFrame, prompts: int = SAMPLE_PROMPTS, completions: int = SAMPLE_COMPLETIONS, standalone: bool = True
) -> str:
    """Prompts with their completions as entropy-coloured token strips (a rollouts frame, as in
    ``RolloutBatch.to_frame``). All model text is escaped. ``standalone`` adds the styles and
    legend, for use in a notebook cell."""
    groups = [g for _, g in frame.groupby("group" if "group" in frame else "prompt", sort=False)]
    # groups whose rewards differ carry the learning signal, so they come first
    groups.sort(key=lambda g: "reward" not in g or g["reward"].nunique() <= 1)
    parts = [f"<style>{ROLLOUT_CSS}</style>", _entropy_legend()] if standalone else []
    for g in groups[:prompts]:
        parts.append(f'<div class="prompt">{_esc(g["prompt"].iloc[0] if "prompt" in g else "")}</div>')
        parts += [_completion(row) for _, row in g.head(completions).iterrows()]
    return "\n".join(parts)


def _completion(row: pd.Series) -> str:
    meta = f"reward {_fmt(row.get('reward'))}" + "".join(
        f" · {key} {_esc(row.get(key))}" for key in ("strategy", "answer", "length") if key in row
    )
    return (
        f'<div class="completion"><div class="meta">{meta}</div>'
        f"<pre>{_esc(row.get('completion', ''))}</pre>{_token_strip(row)}</div>"
    )


def _token_strip(row: pd.Series) -> str:
    entropy, pivots = _seq(row, "entropy"), _seq(row, "pivot")
    # without decoded tokens the ids still show where the entropy sits
    tokens = _seq(row, "tokens") or [f"[{t}]" for t in _seq(row, "token_ids")]
    spans = []
    for i, (token, h) in enumerate(zip(tokens, entropy)):
        h, pivot = _as_float(h), i < len(pivots) and bool(pivots[i])
        t = 0.0 if math.isnan(h) else min(h / ENTROPY_SCALE, 1.0)
        rgb = ",".join(str(round(255 + t * (c - 255))) for c in ORANGE)
        outline = f";outline:2px solid {PIVOT_OUTLINE}" if pivot else ""
        tip = f"{token} · entropy {'n/a' if math.isnan(h) else f'{h:.3f}'} nats" + (" · pivot" if pivot else "")
        spans.append(f'<span style="background:rgb({rgb}){outline}" title="{_esc(tip)}">{_esc(token)}</span>')
    return f'<div class="strip">{"".join(spans)}</div>' if spans else ""


def _seq(row: pd.Series, key: str) -> list:
    value = row.get(key)
    return [] if value is None or isinstance(value, (float, str)) else list(value)


def _entropy_legend() -> str:
    return (
        f'<p class="meta">token background = entropy: 0 <span class="legend" style="background:'
        f'linear-gradient(to right,#fff,rgb{ORANGE})"></span> ≥{ENTROPY_SCALE:g} nats · '
        f'<span style="outline:2px solid {PIVOT_OUTLINE};padding:0 2px">pivot</span> outlined · '
        "hover a token for its value</p>"
    )
