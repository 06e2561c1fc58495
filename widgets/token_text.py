"""How a token reads on the page: readable text (``display_token``), the same in a strip and in its hover.

Every space as a faint ``␣``, a newline as ``↵`` followed by a line break in the strip, a tab as
``⇥``; other invisible characters as ``<U+200B>``; the bytes of a character that a byte-level
BPE split over several tokens as ``<0xF0>`` (the hover gives the character they make
together); special tokens (``<|im_end|>``) boxed and in italics.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

# visible stand-ins for characters that would otherwise vanish inside a strip
VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


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
                out += _text_segments(data[i : i + n].decode("utf-8"))
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
    inner = "".join(html.escape(s) if not k else f"<span class='wb-{k}'>{html.escape(s)}</span>" for s, k in segments)
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
