"""Word error rate for intelligibility checks: text normalisation and a word-level edit distance.

Both sides are normalised the same way before scoring, so that ASR spelling habits are not counted as errors:
lowercase, numbers spelled out ("3" → "three", "1,200" → "one thousand two hundred"), apostrophes dropped
("it's" → "its"), every other non-letter a word break. WER = (substitutions + deletions + insertions) /
reference words, summed over a corpus (not averaged per sentence, so long sentences weigh more, as usual).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))


def number_words(n: int) -> str:
    """0 ≤ n < 10¹² in English words, without "and": 1205 → "one thousand two hundred five"."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for scale, name in _SCALES:
        if n >= scale:
            head, rest = divmod(n, scale)
            return number_words(head) + " " + name + ("" if rest == 0 else " " + number_words(rest))
    raise AssertionError(n)


def normalize(text: str) -> list[str]:
    """→ the words of `text`, lowercased, numbers spelled out, punctuation removed."""
    text = text.lower().replace("’", "'")
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)  # 1,200 → 1200
    text = re.sub(r"\d+", lambda m: " " + number_words(int(m.group())) + " ", text)
    text = text.replace("'", "")
    return re.sub(r"[^a-z]+", " ", text).split()


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance between two word lists (unit costs)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


@dataclass
class WER:
    errors: int
    words: int

    @property
    def rate(self) -> float:
        return self.errors / self.words if self.words else 0.0


def word_error_rate(refs: list[str], hyps: list[str]) -> WER:
    """Corpus WER of hypotheses against references (same order), both normalised."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    errors = words = 0
    for ref, hyp in zip(refs, hyps):
        r, h = normalize(ref), normalize(hyp)
        errors += edit_distance(r, h)
        words += len(r)
    return WER(errors, words)
