"""TokenView: the responses of one prompt as token strips coloured by a recorded per-token value.

Every value comes from the ``RolloutBatch`` (entropy, behaviour log-prob, token advantage,
ERPO gate, Policy Split bonus), or from a run directory's rollouts files: nothing is
recomputed. Model text is untrusted: every token, prompt, answer and strategy goes through
``html.escape`` before it reaches the page. How a token reads is ``token_text``.
"""

from __future__ import annotations

import html
import math
from typing import Any

import ipywidgets as W
import numpy as np
from plotly.colors import get_colorscale, sample_colorscale, unlabel_rgb

from workbench.step.batch import RolloutBatch

from ._live import update_prompt_selector
from .following import FOLLOW_INTERVAL, Feed
from .style import DIVERGING, FONT_SIZE, PIVOT_OUTLINE, SEQUENTIAL, TOKEN_VALUES
from .token_text import ShownToken, TokenDecoder, display_token  # noqa: F401 (display_token: also read from here)

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
.wb-mark {{ opacity:0.55; }}
.wb-byte {{ opacity:0.8; font-size:0.8em; }}
.wb-special {{ border:1px solid currentColor; border-radius:3px; padding:0 2px; font-style:italic; font-size:0.85em; }}
"""
NEWLINE_BREAKS = 2  # at most this many line breaks drawn after a token that holds newlines
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
    if batch.token_kl is not None and not batch.token_kl.isnan().all():
        values["kl"] = batch.token_kl
    return values


# where a step measured no response's KL: the update measures one response a group at beta 0
KL_NOTE = " · grey: KL not measured (at beta 0 one response a group is)"


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


def _fmt(value, digits: int = 3) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _or(value, default: str):
    return default if value is None else value


def row_header(batch, row: int, label: str = "") -> str:
    """Reward, answer, strategy, mode, stage (and advantage) of a response, as escaped HTML."""
    scored = batch.answers is not None  # before scoring there is no answer yet; after, None means unparsed
    fields = [
        ("reward", None if batch.rewards is None else float(batch.rewards[row])),
        ("answer", _or(batch.answers[row], "unparsed") if scored else None),
        ("strategy", _or(batch.strategies[row], "none") if batch.strategies is not None else None),
        ("mode", batch.mode[row]),
        ("stage", batch.stage[row]),
        ("advantage", None if batch.advantages is None else float(batch.advantages[row])),
    ]
    parts = [f"{name} <b>{html.escape(_fmt(value))}</b>" for name, value in fields if value is not None]
    return f"<div class='wb-head'>{html.escape(label)}{' · '.join(parts)}</div>"


def _byte_runs(shown: list[ShownToken]) -> dict[int, tuple[int, int]]:
    """Position -> (start, end) of the run of consecutive byte-piece tokens it belongs to."""
    runs, t = {}, 0
    while t < len(shown):
        if shown[t].kind != "bytes":
            t += 1
            continue
        end = t
        while end < len(shown) and shown[end].kind == "bytes":
            end += 1
        runs.update({i: (t, end) for i in range(t, end)})
        t = end
    return runs


def token_strip(batch, row: int, decode: TokenDecoder, value: str, values: dict, scale: ColorScale) -> str:
    """One response as ``<span class="wb-token">`` per generated token, coloured by ``value``;
    the title shows the token, every recorded value of it and its top-k alternatives."""
    n = int(batch.mask[row].sum())
    ids = batch.ids[row, :n].tolist()
    per_token = {name: v[row, :n].float().tolist() for name, v in values.items()}
    pivots = batch.pivots[row, :n].tolist() if batch.pivots is not None else [False] * n
    top_ids, top_probs = batch.topk_ids[row, :n].tolist(), batch.topk_probs[row, :n].tolist()
    order = [value, *(k for k in per_token if k != value)]
    shown_tokens = [decode(token_id) for token_id in ids]
    runs = _byte_runs(shown_tokens)
    spans = []
    for t, (token_id, token) in enumerate(zip(ids, shown_tokens)):
        shown = per_token[value][t]
        background, color = scale(shown)
        described = " · ".join(
            f"{TOKEN_VALUES[k][0]} {_fmt(per_token[k][t])}" + (f" {TOKEN_VALUES[k][1]}" if TOKEN_VALUES[k][1] else "")
            for k in order
        )
        alternatives = "".join(f"\n  {decode(i).label()}   {p:.3f}" for i, p in zip(top_ids[t], top_probs[t]) if p > 0)
        head = f"{token.label()}   token {token_id}{' · pivot' if pivots[t] else ''}"
        if t in runs:
            start, end = runs[t]
            head += f"\nbytes of a character split over tokens {start + 1}-{end}: {decode.joined(ids[start:end])}"
        title = f"{head}\n{described}" + (f"\ntop-{len(top_ids[t])}:{alternatives}" if top_ids[t] else "")
        css = "wb-token wb-pivot" if pivots[t] else "wb-token"
        spans.append(
            f"<span class='{css}' style='background:{background};color:{color}' "
            f"data-value='{shown:.6g}' title='{html.escape(title)}'>{token.html}</span>"
            + "<br>"
            * min(token.newlines, NEWLINE_BREAKS)
        )
    return f"<div class='wb-strip'>{''.join(spans)}</div>"


MARKS_KEY = (
    "<span>· <span class='wb-mark'>␣</span> space <span class='wb-mark'>↵</span> newline "
    "<span class='wb-mark'>⇥</span> tab · <span class='wb-byte'>&lt;0xF0&gt;</span> byte of a split "
    "character · <span class='wb-special'>&lt;|special|&gt;</span> special token</span>"
)


def legend(value: str, scale: ColorScale, note: str = "", marks: bool = True, top_k: int = 5) -> str:
    """The colour bar, the pivot outline and (``marks``) the key to how tokens are written;
    ``top_k``: the alternatives each token's hover lists (0: a recorded step, which has none)."""
    label, unit, _ = TOKEN_VALUES[value]
    unit = f" ({unit})" if unit else ""
    return (
        f"<div class='wb-legend'><span>colour = {html.escape(label)}{html.escape(unit)}:</span>"
        f"<span>{scale.low:.3g}</span><span class='wb-bar' style='background:{scale.gradient()}'></span>"
        f"<span>{scale.high:.3g}</span>"
        f"<span class='wb-token wb-pivot' style='background:#fff'>pivot</span> outlined"
        f"{MARKS_KEY if marks else ''}"
        f"<span>· hover a token for its values{f' and top-{top_k} alternatives' if top_k else ''}"
        f"{html.escape(note)}</span></div>"
    )


class TokenView(W.VBox):
    """The responses of one prompt of a ``RolloutBatch`` as stacked token strips.

    ``source`` is a batch, shown as it is, or a run to follow (``following.Feed``): a Trainer in
    this process or a run directory (a str or Path) another process writes. A followed run shows
    its newest step's rollouts, with a step selector that grows as steps arrive (pick an older step
    to stay on it; a trainer holds its last few steps' batches, a run directory every step), its
    tokens decoded by the trainer's tokenizer or read as the run recorded them, unless a
    ``tokenizer`` is given. ``value`` colours the tokens: one of the per-token values the batch
    holds (``token_values``). ``poll()`` reads what is new at once; ``close()`` stops following."""

    def __init__(
        self, source, tokenizer=None, value: str = "entropy", prompt: int = 0, interval: float = FOLLOW_INTERVAL
    ):
        self.tokenizer = tokenizer
        self.prompt_control = W.Dropdown(description="prompt", layout=W.Layout(width="420px"))
        self.value_control = W.Dropdown(description="colour by", layout=W.Layout(width="300px"))
        self.legend = W.HTML()
        self.strips = W.HTML()
        self.feed: Feed | None = None
        self.batch: RolloutBatch | None = None
        self.shown_step: int | None = None
        controls, head = [self.prompt_control, self.value_control], []
        if not isinstance(source, RolloutBatch):
            self.feed = Feed(source, self._on_update, interval=interval)
            self.step_control = W.Dropdown(description="step", layout=W.Layout(width="180px"))
            self.step_control.observe(lambda change: self.show_step(change["new"]), names="value")
            controls, head = [self.step_control, *controls], [self.feed.status]
            self._given_tokenizer = tokenizer
            # update()'s keywords for the first step shown
            self._first: dict[str, Any] = {"value": value, "prompt": prompt}
        super().__init__([*head, W.HBox(controls), self.legend, self.strips])
        self.add_class("wb-token-view")  # a stable hook for styling and browser tests
        self._updating = False
        self.prompt_control.observe(self._on_control, names="value")
        self.value_control.observe(self._on_control, names="value")
        if self.feed is None:
            self.update(source, value=value, prompt=prompt)
        else:
            self.render()
            self.feed.start()

    # --- a followed run --------------------------------------------------------------------------
    def poll(self) -> None:
        """Read what the followed run recorded since the last poll, and show it."""
        self._followed().poll()

    def _followed(self) -> Feed:
        """The feed of the followed run."""
        if self.feed is None:
            raise RuntimeError("this view shows a batch, not a run: update(batch) shows another")
        return self.feed

    def _on_update(self, update) -> None:
        """New rollouts: the newest step is shown if the newest was shown (or none yet)."""
        known = [] if update.restarted else list(self.step_control.options)
        steps = self._followed().source.rollout_steps()
        chosen = self.step_control.value
        stay = known and chosen != known[-1] and chosen in steps  # an older step picked: kept
        target = chosen if stay else steps[-1] if steps else None
        self._updating = True  # the options and the choice change together; shown once, below
        try:
            self.step_control.options = steps
            self.step_control.value = target
        finally:
            self._updating = False
        if target is None:
            self.batch = self.shown_step = None
            self.render()
        elif target != self.shown_step or target in update.rollout_steps:  # new, or its file written again
            self.show_step(target)

    def show_step(self, step: int | None) -> None:
        """Show the rollouts of ``step`` of the followed run."""
        if self._updating or step is None:
            return
        recorded = self._followed().source.step_batch(step)
        self.tokenizer = self._given_tokenizer or recorded.tokenizer
        first, self._first = self._first, {}  # the constructor's value and prompt apply to the first step shown
        self.shown_step = step
        self.update(recorded.batch, **first)

    def close(self) -> None:
        """Stop following the run, and close the widget."""
        feed = getattr(self, "feed", None)  # None too when closed before __init__ set it
        if feed is not None:
            feed.close()
        super().close()

    def _on_control(self, _change) -> None:
        if not self._updating:  # update() sets both controls, then renders once
            self.render()

    def update(self, batch=None, value: str | None = None, prompt: int | None = None) -> None:
        """Show ``batch`` (none given: the one shown, after a poll of the followed run), keeping the
        selected prompt and value where they still exist."""
        if batch is None and self.feed is not None:
            self.feed.poll()
        batch = batch if batch is not None else self.batch
        if batch is None:
            raise ValueError("no rollouts recorded yet: run a step first")
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
        if batch is None:
            self.legend.value, self.strips.value = "", "<i>no rollouts recorded yet</i>"
            return
        signed = TOKEN_VALUES[value][2]
        scale = ColorScale(self.values[value].float().cpu().numpy(), batch.mask.cpu().numpy(), signed)
        note = "" if self.tokenizer is not None else " (no tokenizer: token ids shown)"
        if value == "kl" and bool(self.values[value][batch.mask.bool()].isnan().any()):
            note += KL_NOTE
        marks, top_k = self.tokenizer is not None, batch.topk_ids.shape[-1]
        self.legend.value = f"<style>{CSS}</style>{legend(value, scale, note, marks=marks, top_k=top_k)}"
        group = self.prompt_control.value
        rows = [i for i, g in enumerate(batch.group.tolist()) if g == group]
        body = [f"<div class='wb-prompt'>{html.escape(batch.problems[group].prompt)}</div>"]
        for k, row in enumerate(rows):
            body.append(
                f"<div class='wb-row'>{row_header(batch, row, f'#{k} · ')}"
                f"{token_strip(batch, row, self.decode, value, self.values, scale)}</div>"
            )
        self.strips.value = f"<div class='wb-tokens'>{''.join(body)}</div>"
