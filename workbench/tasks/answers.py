"""Final answers of completions, parsed as numbers or as text; never evaluated.

How :class:`~workbench.tasks.dataset.DatasetTask` reads a completion's final answer:

* numeric (``parse_number_answer``): the first number after the last ``####``, else after the
  last ``answer:`` (any case), else inside the last ``\\boxed{...}``, else the last number in
  the text. Thousands commas, ``+`` signs and trailing zeros (``42.0``) are normalised.
* exact (``parse_exact_answer``): the first non-empty line after the last ``####`` (commas
  removed, as for references) or ``answer:``, else the whole completion; stripped.

References go through ``reference_answer`` and numbers through ``format_number`` on both sides,
so the parsed answer doubles as the strategy label (answer-based clustering).
:class:`~workbench.tasks.reasoning_gym.ReasoningGymTask` reuses the number pattern and the
normalisation.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

# A number: thousands-grouped (1,234,567) or plain digits, optional decimals; a sign only
# when it does not follow a word character (so "10-5" yields 10 and 5, not -5).
NUMBER = re.compile(
    r"(?:(?<![\w.)\]])[-+])?(?<![0-9.])(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?(?![0-9])"
    r"|(?:(?<![\w.)\]])[-+])?(?<![0-9.])\.[0-9]+(?![0-9])"
)
_ANSWER_MARK = re.compile(r"answer\s*:", re.IGNORECASE)
_BOXED = "\\boxed{"
_DECIMAL_TEXT = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]{1,4})?")


def last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    """The last match of ``pattern`` in ``text``, or None."""
    matches = list(pattern.finditer(text))
    return matches[-1] if matches else None


def reference_answer(answer: Any) -> str:
    """The reference of a raw answer: GSM8K ``... #### 1,234`` -> ``1234``; else stripped text."""
    text = format_number(answer) if isinstance(answer, (int, float)) and not isinstance(answer, bool) else str(answer)
    if "####" in text:
        return text.rsplit("####", 1)[1].strip().replace(",", "")
    return text.strip()


def parse_number_answer(completion: str) -> Decimal | None:
    """The final numeric answer of a completion (see the module docstring), or None."""
    segment = _after_marker(completion)
    if segment is not None:
        match = NUMBER.search(segment)
        return to_decimal(match.group()) if match else None
    boxed = completion.rfind(_BOXED)
    if boxed >= 0:
        inner = completion[boxed + len(_BOXED) :].split("}", 1)[0]
        match = NUMBER.search(inner)
        if match:
            return to_decimal(match.group())
    last = last_match(NUMBER, completion)
    return to_decimal(last.group()) if last else None


def parse_exact_answer(completion: str) -> str | None:
    """The final answer text of a completion for exact matching, or None when empty."""
    segment = _after_marker(completion)
    if segment is None:
        text = completion.strip()
    else:
        text = next((line.strip() for line in segment.splitlines() if line.strip()), "")
        if "####" in completion:  # reduced as a GSM8K reference is
            text = text.replace(",", "").strip()
    return text or None


def _after_marker(text: str) -> str | None:
    """Text after the last ``####``, else after the last ``answer:``; None when neither occurs."""
    if "####" in text:
        return text.rsplit("####", 1)[1]
    last = last_match(_ANSWER_MARK, text)
    return text[last.end() :] if last else None


def to_decimal(text: str) -> Decimal | None:
    """A finite Decimal of a number string (commas, ``+`` and whitespace allowed), else None."""
    cleaned = str(text).strip().replace(",", "")
    if cleaned.startswith("+"):
        cleaned = cleaned[1:]
    if not cleaned or len(cleaned) > 400 or not _DECIMAL_TEXT.fullmatch(cleaned):
        return None
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def format_number(value: Any) -> str:
    """Canonical text of a number: ``42.0`` -> ``42``, ``-0`` -> ``0``, no exponent."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value.is_integer():
            return str(int(value))
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if value == 0:
        return "0"
    text = format(value.normalize(), "f")
    return text
