"""Escaping and number formatting shared by the HTML report modules.

Everything a run wrote (config values, model text, metric values) reaches the page through
``_esc`` or ``_fmt``, so untrusted text is always escaped and numbers always read the same.
"""

from __future__ import annotations

import html
import math


def _as_float(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def _fmt(v) -> str:
    f = _as_float(v)
    return "" if math.isnan(f) else f"{f:.3f}"


def _esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)
