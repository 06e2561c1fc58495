"""Diversity of a group of responses: distinct answers and strategies, distinct-n, self-BLEU,
pairwise similarity.

distinct-n = |unique n-grams| / |n-grams| over all texts; self-BLEU = mean_i BLEU(text_i,
references = the other texts); pairwise similarity = Jaccard |A & B| / |A | B| of character
3-gram sets. distinct-n and self-BLEU count whitespace tokens when the texts have spaces,
else characters.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from workbench.tasks.base import is_success


def distinct(labels: Sequence[object]) -> int:
    """Number of distinct labels, ignoring None (unparsed responses)."""
    return len({x for x in labels if x is not None})


def group_diversity(groups: Sequence[Sequence[int]], answers, strategies, rewards) -> dict[str, float]:
    """Means over groups of unique answers, distinct strategies and distinct correct strategies."""
    unique_answers, strategies_n, correct_n = [], [], []
    for rows in groups:
        unique_answers.append(distinct([answers[i] for i in rows]))
        strategies_n.append(distinct([strategies[i] for i in rows]))
        correct_n.append(distinct([strategies[i] for i in rows if is_success(rewards[i])]))
    n = max(1, len(groups))
    return {
        "unique_answers": sum(unique_answers) / n,
        "distinct_strategies": sum(strategies_n) / n,
        "distinct_correct_strategies": sum(correct_n) / n,
    }


def _tokenize(texts: Sequence[str]) -> list[list[str]]:
    """Whitespace tokens when any text has whitespace, else characters (the built-in tasks'
    completions, e.g. ``3*5=15,15+7=22``, have no spaces). One rule for the whole set, so
    every text is compared in the same units."""
    if any(any(ch.isspace() for ch in t) for t in texts):
        return [t.split() for t in texts]
    return [list(t) for t in texts]


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n: unique n-grams / total n-grams over all texts (tokens as ``_tokenize`` says);
    0 when the texts hold no n-gram."""
    if n < 1:
        raise ValueError(f"n={n!r} must be an integer >= 1")
    grams = [g for tokens in _tokenize(texts) for g in _ngrams(tokens, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _bleu(hypothesis: list[str], references: list[list[str]], max_n: int) -> float:
    """Sentence BLEU with uniform weights, clipped counts against the max over references, the
    brevity penalty to the closest reference length, and add-one smoothing of the 2..max_n-gram
    precisions (Lin and Och 2004) so that one missing 4-gram does not zero the score."""
    if not hypothesis:
        return 0.0
    log_precision = 0.0
    for n in range(1, max_n + 1):
        counts = Counter(_ngrams(hypothesis, n))
        most: Counter = Counter()
        for ref in references:
            for gram, c in Counter(_ngrams(ref, n)).items():
                most[gram] = max(most[gram], c)
        matches = sum(min(c, most[gram]) for gram, c in counts.items())
        total = sum(counts.values())
        if n == 1 and matches == 0:
            return 0.0
        precision = matches / total if n == 1 else (matches + 1) / (total + 1)
        log_precision += math.log(precision) / max_n
    length = len(hypothesis)
    closest = min((len(r) for r in references), key=lambda r: (abs(r - length), r))
    brevity = 1.0 if length > closest else math.exp(1 - closest / length)
    return brevity * math.exp(log_precision)


def self_bleu(texts: Sequence[str], max_n: int = 4) -> float:
    """Mean over texts of the BLEU of each against all the others as references (higher = less
    diverse); 0 for fewer than two texts."""
    if max_n < 1:
        raise ValueError(f"max_n={max_n!r} must be an integer >= 1")
    tokens = _tokenize(texts)
    if len(tokens) < 2:
        return 0.0
    scores = [_bleu(tokens[i], tokens[:i] + tokens[i + 1 :], max_n) for i in range(len(tokens))]
    return sum(scores) / len(scores)


def unique_answers(answers: Sequence[object]) -> int:
    """Number of distinct parsed answers (None = unparsed, not counted)."""
    return distinct(answers)


def strategy_count(
    strategies: Sequence[object], correct: Sequence[float] | None = None, correct_only: bool = False
) -> int:
    """Number of distinct strategies (None not counted); with ``correct_only``, only among the
    responses whose ``correct`` entry (a bool or a reward) is a success (above 0.5)."""
    if not correct_only:
        return distinct(strategies)
    if correct is None or len(correct) != len(strategies):
        raise ValueError(
            f"correct_only=True needs one correct flag or reward per strategy: got "
            f"{None if correct is None else len(correct)} for {len(strategies)} strategies"
        )
    return distinct([s for s, c in zip(strategies, correct) if is_success(float(c))])


def _char_trigrams(text: str) -> set[str]:
    # a text shorter than 3 characters is its own only "trigram", so equal short texts still match
    return {text[i : i + 3] for i in range(len(text) - 2)} or {text}


def pairwise_similarity(texts: Sequence[str]) -> np.ndarray:
    """[n, n] Jaccard similarity of the texts' character 3-gram sets, in [0, 1], diagonal 1.

    Character 3-grams measure surface overlap in any language or notation (prose or
    ``3*5=15,15+7=22``) with no tokenizer to choose.
    """
    grams = [_char_trigrams(t) for t in texts]
    n = len(grams)
    out = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = len(grams[i] & grams[j]) / len(grams[i] | grams[j])
    return out
