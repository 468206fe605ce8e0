"""The text front-end the pipeline calls: split text into segments, segments into phone ids (+ BERT features)."""
from __future__ import annotations

import re
import unicodedata

import torch

from specdec.errors import SpecdecError
from specdec.models.text import english
from specdec.models.text.split import METHODS, split_text
from specdec.models.text.symbols import PUNCTUATION, SILENCES, SYMBOL_TO_ID

LANGUAGES = ("en",)
_CJK = re.compile(r"[\u3000-\u303f\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uff00-\uffef]")  # kana, Han, Hangul, full-width
MIN_PHONES = 6  # upstream re-reads shorter texts once with a leading "."


def _unsupported(text: str, supported) -> list[str]:
    """Letters (any script) that the language's normaliser would silently drop."""
    base = unicodedata.normalize("NFD", text)
    return sorted({c for c in base if unicodedata.category(c).startswith("L") and not supported(c)})


class Frontend:
    """Upstream GPT-SoVITS's text front-end for one symbol table ("v1" | "v2")."""

    def __init__(self, symbol_version: str = "v2"):
        if symbol_version not in SYMBOL_TO_ID:
            raise SpecdecError(f"symbol set {symbol_version!r} unknown: expected one of {sorted(SYMBOL_TO_ID)}")
        self.symbol_version = symbol_version
        self.symbol_to_id = SYMBOL_TO_ID[symbol_version]

    def split(self, text: str, method: str = "cut1") -> list[str]:
        """Segments as upstream cuts them (methods cut0-cut5); segments end in "." for Latin text, "。" otherwise."""
        if method not in METHODS:
            raise SpecdecError(f"text split method {method!r} unknown: use one of {', '.join(METHODS)}")
        return split_text(text, method, "。" if _CJK.search(text) else ".")

    def symbols(self, text: str, language: str) -> list[str]:
        """Phone symbols of one segment, as upstream's get_phones_and_bert builds them."""
        if language not in LANGUAGES:
            raise SpecdecError(f"language {language!r} not supported: use one of {', '.join(LANGUAGES)}")
        if not text.strip():
            raise SpecdecError("empty text: nothing to say")
        bad = _unsupported(text, lambda c: c.isascii())
        if bad:
            raise SpecdecError(f"characters {''.join(bad)!r} cannot be read as English (language {language!r})")
        text = re.sub(r" {2,}", " ", text)
        phones = self._g2p(text, language)
        if len(phones) < MIN_PHONES:
            phones = self._g2p("." + text, language)
        if all(p in PUNCTUATION or p in SILENCES for p in phones):
            raise SpecdecError(f"nothing to pronounce in {text.strip()[:40]!r}")
        return phones

    def _g2p(self, text: str, language: str) -> list[str]:
        return english.g2p(english.normalize(text))

    def phones(self, text: str, language: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """→ phone ids [n] and BERT features [1024, n] (None: zeros, as for every non-Chinese text)."""
        phones = self.symbols(text, language)
        ids = [self.symbol_to_id.get(p, self.symbol_to_id["UNK"]) for p in phones]
        return torch.tensor(ids, dtype=torch.long), None
