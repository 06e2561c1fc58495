"""TokenView: the responses of one prompt as token strips coloured by a recorded per-token value.

Every value comes from the ``RolloutBatch`` (entropy, behaviour log-prob, token advantage,
ERPO gate, Policy Split bonus): nothing is recomputed. Model text is untrusted: every
token, prompt, answer and strategy goes through ``html.escape`` before it reaches the page.

Tokens are shown as readable text (``display_token``), the same in the strip and in the hover:
every space as a faint ``␣``, a newline as ``↵`` followed by a line break in the strip, a tab as
``⇥``; other invisible characters as ``<U+200B>``; the bytes of a character that a byte-level
BPE split over several tokens as ``<0xF0>`` (the hover gives the character they make
together); special tokens (``<|im_end|>``) boxed and in italics.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass

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
.wb-mark {{ opacity:0.55; }}
.wb-byte {{ opacity:0.8; font-size:0.8em; }}
.wb-special {{ border:1px solid currentColor; border-radius:3px; padding:0 2px; font-style:italic; font-size:0.85em; }}
"""
# visible stand-ins for characters that would otherwise vanish inside a strip
VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}
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


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, character -> byte: a printable character stands for each
    byte (``Ġ`` for a space, ``Ċ`` for a newline), so a piece that splits a character still maps
    back to its bytes."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in kept]
    return {**{chr(b): b for b in kept}, **{chr(256 + i): b for i, b in enumerate(moved)}}


BYTE_DECODER = _byte_decoder()
_BYTE_PIECES = re.compile(r"(?:<0x[0-9A-Fa-f]{2}>)+")  # SentencePiece byte fallback: <0xE2>
_Segment = tuple[str, str]  # (text, "" | "mark" | "byte"): plain text, a stand-in, a byte


def _text_segments(text: str) -> list[_Segment]:
    """Text with its invisible characters replaced by marks."""
    out: list[_Segment] = []
    for ch in text:
        if ch in VISIBLE:
            out.append((VISIBLE[ch], "mark"))
        elif ch == "\ufffd" or not ch.isprintable():
            out.append((f"<U+{ord(ch):04X}>", "mark"))
        elif out and out[-1][1] == "":
            out[-1] = (out[-1][0] + ch, "")
        else:
            out.append((ch, ""))
    return out


def _bytes_segments(data: bytes) -> list[_Segment]:
    """UTF-8 bytes as text, each byte that is not part of a whole character as ``<0xF0>``."""
    out: list[_Segment] = []
    i = 0
    while i < len(data):
        for n in range(1, 5):  # UTF-8 is prefix-free: the shortest prefix that decodes is one character
            try:
                out += _text_segments(data[i:i + n].decode("utf-8"))
                i += n
                break
            except UnicodeDecodeError:
                continue
        else:
            out.append((f"<0x{data[i]:02X}>", "byte"))
            i += 1
    return out


def _token_segments(tokenizer, token_id: int) -> tuple[list[_Segment], str, int]:
    """(segments, kind, newlines) of one token; see ``display_token``."""
    if tokenizer is None:
        return [(f"⟨{token_id}⟩", "")], "text", 0
    try:
        piece = tokenizer.convert_ids_to_tokens(token_id)
    except (AttributeError, TypeError, ValueError, IndexError, OverflowError):
        piece = None
    piece = piece if isinstance(piece, str) else None
    if token_id in set(getattr(tokenizer, "all_special_ids", None) or ()):
        return _text_segments(piece or tokenizer.decode([token_id])) or [("∅", "mark")], "special", 0
    text = tokenizer.decode([token_id])
    if "\ufffd" in text and (piece is None or "\ufffd" not in piece):  # part of a multi-byte character
        if piece and _BYTE_PIECES.fullmatch(piece):  # SentencePiece byte fallback
            segments = [(piece.upper().replace("0X", "0x"), "byte")]
        elif piece and all(c in BYTE_DECODER for c in piece):  # byte-level BPE: the piece's own bytes
            segments = _bytes_segments(bytes(BYTE_DECODER[c] for c in piece))
        else:  # no way back to the bytes: say which characters were cut
            segments = [(s, k) if s != "<U+FFFD>" else ("<0x?>", "byte") for s, k in _text_segments(text)]
        kind = "bytes" if any(k == "byte" for _, k in segments) else "text"
        return segments, kind, text.count("\n")
    if piece and piece[0] in "Ġ▁" and not text.startswith(" "):  # a single-token decode dropped the space
        text = " " + text
    return _text_segments(text) or [("∅", "mark")], "text", text.count("\n")


def display_token(tokenizer, token_id: int) -> tuple[str, str]:
    """How a token reads on the page: ``(text, kind)``, kind one of "text", "special", "bytes".

    Spaces, newlines and tabs become ``␣ ↵ ⇥`` (other invisible characters ``<U+200B>``, an
    empty token ``∅``), so ``" world"`` reads ``␣world``. A token that holds only part of a
    multi-byte character (it decodes to U+FFFD alone) shows the bytes it cannot complete,
    ``<0xF0><0x9F>``: kind "bytes". Special tokens (``tokenizer.all_special_ids``) read as
    their piece, ``<|im_end|>``: kind "special". No tokenizer: the id, ``⟨17⟩``. The text is
    plain, not HTML-escaped."""
    segments, kind, _ = _token_segments(tokenizer, int(token_id))
    return "".join(s for s, _ in segments), kind


@dataclass(frozen=True)
class ShownToken:
    text: str  # plain readable text (display_token)
    kind: str  # "text", "special" or "bytes"
    html: str  # escaped, stand-ins in a faint style, special tokens boxed
    newlines: int  # newlines in the token's text: line breaks to draw after it

    def label(self) -> str:
        """The plain text for a hover, the kind named when it is not plain text."""
        return self.text + {"special": " (special)", "bytes": " (bytes)"}.get(self.kind, "")


def _segments_html(segments: list[_Segment], kind: str) -> str:
    inner = "".join(html.escape(s) if not k else f"<span class='wb-{k}'>{html.escape(s)}</span>"
                    for s, k in segments)
    return f"<span class='wb-special'>{inner}</span>" if kind == "special" else inner


class TokenDecoder:
    """Token id -> ``ShownToken`` (readable text, kind, HTML), cached; ids in angle brackets
    when there is no tokenizer."""

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer
        self._cache: dict[int, ShownToken] = {}

    def __call__(self, token_id: int) -> ShownToken:
        shown = self._cache.get(token_id)
        if shown is None:
            segments, kind, newlines = _token_segments(self.tokenizer, int(token_id))
            shown = ShownToken("".join(s for s, _ in segments), kind, _segments_html(segments, kind), newlines)
            self._cache[token_id] = shown
        return shown

    def joined(self, ids: list[int]) -> str:
        """Several tokens decoded together, readable: the characters a run of byte pieces makes."""
        if self.tokenizer is None:
            return ""
        return "".join(s if s != "<U+FFFD>" else "<0x?>" for s, _ in _text_segments(self.tokenizer.decode(list(ids))))


def _fmt(value, digits: int = 3) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _or(value, default: str):
    return default if value is None else value


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
        described = " · ".join(f"{TOKEN_VALUES[k][0]} {_fmt(per_token[k][t])}"
                               + (f" {TOKEN_VALUES[k][1]}" if TOKEN_VALUES[k][1] else "") for k in order)
        alternatives = "".join(f"\n  {decode(i).label()}   {p:.3f}" for i, p in zip(top_ids[t], top_probs[t]) if p > 0)
        head = f"{token.label()}   token {token_id}{' · pivot' if pivots[t] else ''}"
        if t in runs:
            start, end = runs[t]
            head += f"\nbytes of a character split over tokens {start + 1}-{end}: {decode.joined(ids[start:end])}"
        title = f"{head}\n{described}\ntop-{len(top_ids[t])}:{alternatives}"
        css = "wb-token wb-pivot" if pivots[t] else "wb-token"
        spans.append(f"<span class='{css}' style='background:{background};color:{color}' "
                     f"data-value='{shown:.6g}' title='{html.escape(title)}'>{token.html}</span>"
                     + "<br>" * min(token.newlines, NEWLINE_BREAKS))
    return f"<div class='wb-strip'>{''.join(spans)}</div>"


MARKS_KEY = ("<span>· <span class='wb-mark'>␣</span> space <span class='wb-mark'>↵</span> newline "
             "<span class='wb-mark'>⇥</span> tab · <span class='wb-byte'>&lt;0xF0&gt;</span> byte of a split "
             "character · <span class='wb-special'>&lt;|special|&gt;</span> special token</span>")


def legend(value: str, scale: ColorScale, note: str = "", marks: bool = True) -> str:
    """The colour bar, the pivot outline and (``marks``) the key to how tokens are written."""
    label, unit, _ = TOKEN_VALUES[value]
    unit = f" ({unit})" if unit else ""
    return (f"<div class='wb-legend'><span>colour = {html.escape(label)}{html.escape(unit)}:</span>"
            f"<span>{scale.low:.3g}</span><span class='wb-bar' style='background:{scale.gradient()}'></span>"
            f"<span>{scale.high:.3g}</span>"
            f"<span class='wb-token wb-pivot' style='background:#fff'>pivot</span> outlined"
            f"{MARKS_KEY if marks else ''}"
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
        self.legend.value = f"<style>{CSS}</style>{legend(value, scale, note, marks=self.tokenizer is not None)}"
        group = self.prompt_control.value
        rows = [i for i, g in enumerate(batch.group.tolist()) if g == group]
        body = [f"<div class='wb-prompt'>{html.escape(batch.problems[group].prompt)}</div>"]
        for k, row in enumerate(rows):
            body.append(f"<div class='wb-row'>{row_header(batch, row, f'#{k} · ')}"
                        f"{token_strip(batch, row, self.decode, value, self.values, scale)}</div>")
        self.strips.value = f"<div class='wb-tokens'>{''.join(body)}</div>"
