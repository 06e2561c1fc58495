"""TokenView: the responses of one prompt as token strips coloured by a recorded per-token value.

Every value comes from the ``RolloutBatch`` (entropy, behaviour log-prob, token advantage,
ERPO gate, Policy Split bonus): nothing is recomputed. Model text is untrusted: every
token, prompt, answer and strategy goes through ``html.escape`` before it reaches the page.
"""

from __future__ import annotations

import html
import math

import ipywidgets as W
import numpy as np
from plotly.colors import get_colorscale, sample_colorscale, unlabel_rgb

from ._live import update_prompt_selector
from .style import DIVERGING, FONT_SIZE, PIVOT_OUTLINE, SEQUENTIAL, TOKEN_VALUES

CSS = f"""
.wb-tokens {{ font-size:{FONT_SIZE}px; line-height:1.9; }}
.wb-prompt {{ font-family:monospace; white-space:pre-wrap; background:#f4f4f4; padding:4px 8px; margin:4px 0 8px; }}
.wb-row {{ margin:0 0 8px; }}
.wb-head {{ font-size:{FONT_SIZE - 2}px; color:#333; }}
.wb-head b {{ color:#000; }}
.wb-strip {{ font-family:monospace; white-space:pre-wrap; word-break:break-all; }}
.wb-token {{ white-space:pre; padding:2px 1px; margin:0 1px 0 0; border-radius:2px; cursor:default; }}
.wb-pivot {{ outline:2px solid {PIVOT_OUTLINE}; outline-offset:0; font-weight:bold; }}
.wb-legend {{ font-size:{FONT_SIZE - 2}px; color:#333; display:flex; align-items:center; gap:8px; flex-wrap:wrap; }}
.wb-bar {{ display:inline-block; width:160px; height:12px; border:1px solid #999; vertical-align:middle; }}
"""
# visible stand-ins for characters that would otherwise vanish inside a strip
VISIBLE = {"\n": "↵", "\t": "⇥", "\r": "␍"}
LUT_SIZE = 256


def token_values(batch) -> dict:
    """The per-token [N, T] values a batch holds, by the names of ``style.TOKEN_VALUES``."""
    values = {"entropy": batch.entropy, "logprob": batch.logprobs}
    if batch.token_advantages is not None:
        values["token_advantage"] = batch.token_advantages
    if batch.gate is not None:
        values["gate"] = batch.gate
    if "he_bonus" in batch.extras:
        values["he_bonus"] = batch.extras["he_bonus"]
    return values


class ColorScale:
    """Maps a value to a background and a readable text colour: viridis from 0 for unsigned
    values, the diverging map centred on zero for signed ones. The range spans the whole batch,
    so colours mean the same across prompts."""

    def __init__(self, values, mask, signed: bool):
        valid = np.asarray(values, dtype=float)[np.asarray(mask, dtype=bool)]
        valid = valid[np.isfinite(valid)]
        self.signed = signed
        if signed:
            m = float(np.abs(valid).max()) if valid.size else 0.0
            self.low, self.high = (-m, m) if m > 0 else (-1.0, 1.0)
        else:
            top = float(valid.max()) if valid.size else 0.0
            self.low, self.high = 0.0, top if top > 0 else 1.0
        scale = DIVERGING if signed else get_colorscale(SEQUENTIAL)
        self._lut = sample_colorscale(scale, list(np.linspace(0, 1, LUT_SIZE)))
        self._text = ["#000" if _luminance(c) > 0.45 else "#fff" for c in self._lut]

    def position(self, value: float) -> float:
        return min(max((value - self.low) / (self.high - self.low), 0.0), 1.0)

    def __call__(self, value: float) -> tuple[str, str]:
        if not math.isfinite(value):
            return "#ddd", "#000"
        i = round(self.position(value) * (LUT_SIZE - 1))
        return self._lut[i], self._text[i]

    def gradient(self) -> str:
        stops = ", ".join(self._lut[i] for i in np.linspace(0, LUT_SIZE - 1, 9).round().astype(int))
        return f"linear-gradient(to right, {stops})"


def _luminance(rgb: str) -> float:
    r, g, b = (c / 255 for c in unlabel_rgb(rgb))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


class TokenDecoder:
    """Token id -> display text, cached; ids in angle brackets when there is no tokenizer."""

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id]) if self.tokenizer is not None else f"⟨{token_id}⟩"
            self._cache[token_id] = text
        return text


def _fmt(value, digits: int = 3) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _or(value, default: str):
    return default if value is None else value


def _show(token: str) -> str:
    return "".join(VISIBLE.get(ch, ch) for ch in token) or "∅"


def row_header(batch, row: int, label: str = "") -> str:
    """Reward, answer, strategy, mode, stage (and advantage) of a response, as escaped HTML."""
    scored = batch.answers is not None  # before scoring there is no answer yet; after, None means unparsed
    fields = [("reward", None if batch.rewards is None else float(batch.rewards[row])),
              ("answer", _or(batch.answers[row], "unparsed") if scored else None),
              ("strategy", _or(batch.strategies[row], "none") if batch.strategies is not None else None),
              ("mode", batch.mode[row]), ("stage", batch.stage[row]),
              ("advantage", None if batch.advantages is None else float(batch.advantages[row]))]
    parts = [f"{name} <b>{html.escape(_fmt(value))}</b>" for name, value in fields if value is not None]
    return f"<div class='wb-head'>{html.escape(label)}{' · '.join(parts)}</div>"


def token_strip(batch, row: int, decode: TokenDecoder, value: str, values: dict, scale: ColorScale) -> str:
    """One response as ``<span class="wb-token">`` per generated token, coloured by ``value``;
    the title shows every recorded value of the token and its top-k alternatives."""
    n = int(batch.mask[row].sum())
    ids = batch.ids[row, :n].tolist()
    per_token = {name: v[row, :n].float().tolist() for name, v in values.items()}
    pivots = batch.pivots[row, :n].tolist() if batch.pivots is not None else [False] * n
    top_ids, top_probs = batch.topk_ids[row, :n].tolist(), batch.topk_probs[row, :n].tolist()
    order = [value, *(k for k in per_token if k != value)]
    spans = []
    for t, token_id in enumerate(ids):
        token = decode(token_id)
        shown = per_token[value][t]
        background, color = scale(shown)
        described = " · ".join(f"{TOKEN_VALUES[k][0]} {_fmt(per_token[k][t])}"
                               + (f" {TOKEN_VALUES[k][1]}" if TOKEN_VALUES[k][1] else "") for k in order)
        alternatives = " · ".join(f"{decode(i)!r} {p:.3f}" for i, p in zip(top_ids[t], top_probs[t]) if p > 0)
        title = f"{token!r}{' · pivot' if pivots[t] else ''}\n{described}\ntop-{len(top_ids[t])}: {alternatives}"
        css = "wb-token wb-pivot" if pivots[t] else "wb-token"
        spans.append(f"<span class='{css}' style='background:{background};color:{color}' "
                     f"data-value='{shown:.6g}' title='{html.escape(title)}'>{html.escape(_show(token))}</span>")
    return f"<div class='wb-strip'>{''.join(spans)}</div>"


def legend(value: str, scale: ColorScale, note: str = "") -> str:
    label, unit, _ = TOKEN_VALUES[value]
    unit = f" ({unit})" if unit else ""
    return (f"<div class='wb-legend'><span>colour = {html.escape(label)}{html.escape(unit)}:</span>"
            f"<span>{scale.low:.3g}</span><span class='wb-bar' style='background:{scale.gradient()}'></span>"
            f"<span>{scale.high:.3g}</span>"
            f"<span class='wb-token wb-pivot' style='background:#fff'>pivot</span> outlined"
            f"<span>· hover a token for its values and top-5 alternatives{html.escape(note)}</span></div>")


class TokenView(W.VBox):
    """The responses of one prompt of a ``RolloutBatch`` as stacked token strips.

    ``source`` is a batch or a Trainer (its ``last_batch`` and tokenizer). ``value`` colours
    the tokens: one of the per-token values the batch holds (``token_values``)."""

    def __init__(self, source, tokenizer=None, value: str = "entropy", prompt: int = 0):
        self.tokenizer = tokenizer
        self._source = source
        self.prompt_control = W.Dropdown(description="prompt", layout=W.Layout(width="420px"))
        self.value_control = W.Dropdown(description="colour by", layout=W.Layout(width="300px"))
        self.legend = W.HTML()
        self.strips = W.HTML()
        super().__init__([W.HBox([self.prompt_control, self.value_control]), self.legend, self.strips])
        self.add_class("wb-token-view")  # a stable hook for styling and browser tests
        self._updating = False
        self.prompt_control.observe(self._on_control, names="value")
        self.value_control.observe(self._on_control, names="value")
        self.update(source, value=value, prompt=prompt)

    def _on_control(self, _change) -> None:
        if not self._updating:  # update() sets both controls, then renders once
            self.render()

    def update(self, source=None, value: str | None = None, prompt: int | None = None) -> None:
        """Show a new batch (or a Trainer's latest one; no argument: re-read the Trainer given
        before), keeping the selected prompt and value where they still exist."""
        source = self._source = source if source is not None else self._source
        batch = getattr(source, "last_batch", source)
        if batch is None:
            raise ValueError("the trainer has no batch yet: run a step first (trainer.last_batch is None)")
        if source is not batch and self.tokenizer is None:
            self.tokenizer = source.policy.tokenizer
        self.batch, self.values = batch, token_values(batch)
        self.decode = TokenDecoder(self.tokenizer)
        if value is None:  # keep the selection where the new batch has it
            value = self.value_control.value if self.value_control.value in self.values else "entropy"
        if value not in self.values:
            raise ValueError(f"value={value!r} is not allowed: one of {', '.join(self.values)} (what this batch holds)")
        if prompt is not None and not 0 <= prompt < batch.num_groups:
            raise ValueError(f"prompt={prompt!r} is not allowed: an index in 0..{batch.num_groups - 1}")
        self._updating = True
        try:
            self.value_control.options = [(TOKEN_VALUES[k][0], k) for k in self.values]
            self.value_control.value = value
            update_prompt_selector(self.prompt_control, batch)
            if prompt is not None:
                self.prompt_control.value = prompt
        finally:
            self._updating = False
        self.render()

    def render(self) -> None:
        """Redraw the strips of the selected prompt, coloured by the selected value."""
        batch, value = self.batch, self.value_control.value
        signed = TOKEN_VALUES[value][2]
        scale = ColorScale(self.values[value].float().cpu().numpy(), batch.mask.cpu().numpy(), signed)
        note = "" if self.tokenizer is not None else " (no tokenizer: token ids shown)"
        self.legend.value = f"<style>{CSS}</style>{legend(value, scale, note)}"
        group = self.prompt_control.value
        rows = [i for i, g in enumerate(batch.group.tolist()) if g == group]
        body = [f"<div class='wb-prompt'>{html.escape(batch.problems[group].prompt)}</div>"]
        for k, row in enumerate(rows):
            body.append(f"<div class='wb-row'>{row_header(batch, row, f'#{k} · ')}"
                        f"{token_strip(batch, row, self.decode, value, self.values, scale)}</div>")
        self.strips.value = f"<div class='wb-tokens'>{''.join(body)}</div>"
