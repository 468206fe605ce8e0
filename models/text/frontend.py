"""The text front-end the pipeline calls: split text into segments, segments into phone ids (+ BERT features).

    frontend = Frontend("v2", bert="chinese-roberta-wwm-ext-large/")   # bert: optional
    for segment in frontend.split(text, "cut1"):
        ids, bert = frontend.phones(segment, "zh")                     # [n] long, [1024, n] or None

Languages: "en", "zh" (Mandarin; Latin-letter runs inside it are read as English, as upstream does) and "auto"
(the same split, for text of either). Only Mandarin gets BERT features; None means all zeros.
"""
from __future__ import annotations

import re
import sys
import unicodedata

import torch

from specdec.errors import SpecdecError
from specdec.models.text import chinese, english
from specdec.models.text.split import METHODS, split_text
from specdec.models.text.symbols import PUNCTUATION, SILENCES, SYMBOL_TO_ID

LANGUAGES = ("en", "zh", "auto")
MIN_PHONES = 6  # upstream re-reads shorter texts once with a leading "."
_CJK = re.compile(r"[\u3000-\u303f\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uff00-\uffef]")  # kana, Han, Hangul, full-width
_LATIN_RUN = re.compile(r"([A-Za-z]+(?:['\s-]+[A-Za-z]+)*[\s.,?!'-]*)")  # with the ASCII punctuation after it
_HAN = re.compile(r"[\u4e00-\u9fa5]")  # what upstream's Mandarin normaliser keeps


def _readable_zh(c: str) -> bool:
    return bool(c.isascii() or c in chinese.SYMBOL_WORDS or _HAN.match(c.translate(chinese.TO_SIMPLIFIED)) or
                c.translate(chinese.FULL_WIDTH).isascii())


def _check_letters(text: str, language: str) -> None:
    """Letters (any script) that the language would silently drop are an error."""
    readable = (lambda c: c.isascii()) if language == "en" else _readable_zh
    letters = unicodedata.normalize("NFD", text) if language == "en" else text
    bad = sorted({c for c in letters if unicodedata.category(c).startswith("L") and not readable(c)})
    if bad:
        raise SpecdecError(f"characters {''.join(bad[:10])!r} cannot be read in language {language!r} "
                           f"(supported: {', '.join(LANGUAGES)})")


class Frontend:
    """Upstream GPT-SoVITS's text front-end for one symbol table ("v1" | "v2")."""

    def __init__(self, symbol_version: str = "v2", bert: str | None = None):
        if symbol_version not in SYMBOL_TO_ID:
            raise SpecdecError(f"symbol set {symbol_version!r} unknown: expected one of {sorted(SYMBOL_TO_ID)}")
        self.symbol_version = symbol_version
        self.symbol_to_id = SYMBOL_TO_ID[symbol_version]
        self.bert = None
        if bert is not None:
            from specdec.models.text.bert import ChineseBert
            self.bert = ChineseBert(bert)
        self._zero_bert_noticed = False

    def split(self, text: str, method: str = "cut1") -> list[str]:
        """Segments as upstream cuts them (methods cut0-cut5); segments end in "." for Latin text, "。" otherwise."""
        if method not in METHODS:
            raise SpecdecError(f"text split method {method!r} unknown: use one of {', '.join(METHODS)}")
        return split_text(text, method, "。" if _CJK.search(text) else ".")

    def phones(self, text: str, language: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """→ phone ids [n] and BERT features [1024, n] (None: zeros, as for all non-Mandarin text)."""
        chunks = self.read(text, language)
        phones = [p for _, ps, _ in chunks for p in ps]
        ids = torch.tensor([self.symbol_to_id.get(p, self.symbol_to_id["UNK"]) for p in phones], dtype=torch.long)
        if not any(lang == "zh" for lang, _, _ in chunks):
            return ids, None
        if self.bert is None:
            if not self._zero_bert_noticed:
                print("specdec: no chinese-roberta folder given, Mandarin text gets zero BERT features "
                      "(upstream uses real ones: expect flatter prosody)", file=sys.stderr)
                self._zero_bert_noticed = True
            return ids, None
        bert = [self.bert.features(*zh) if lang == "zh" else torch.zeros(self.bert.dim, len(ps)) for lang, ps, zh in chunks]
        return ids, torch.cat(bert, dim=1)

    def symbols(self, text: str, language: str) -> list[str]:
        """Phone symbols of one segment."""
        return [p for _, ps, _ in self.read(text, language) for p in ps]

    def read(self, text: str, language: str) -> list[tuple[str, list[str], tuple[str, list[int]] | None]]:
        """Per language chunk: (language, phone symbols, (normalised text, phones per character) for Mandarin)."""
        if language not in LANGUAGES:
            raise SpecdecError(f"language {language!r} not supported: use one of {', '.join(LANGUAGES)}")
        if not text.strip():
            raise SpecdecError("empty text: nothing to say")
        _check_letters(text, language)
        text = re.sub(r" {2,}", " ", text)
        chunks = self._read(text, language)
        if sum(len(ps) for _, ps, _ in chunks) < MIN_PHONES:
            chunks = self._read("." + text, language)
        if all(p in PUNCTUATION or p in SILENCES for _, ps, _ in chunks for p in ps):
            raise SpecdecError(f"nothing to pronounce in {text.strip()[:40]!r}")
        return chunks

    def _read(self, text: str, language: str):
        if language == "en":
            return [("en", english.g2p(english.normalize(text)), None)]
        chunks = []
        for i, part in enumerate(_LATIN_RUN.split(text.translate(chinese.FULL_WIDTH))):  # odd parts: Latin runs
            if not part.strip():
                continue
            if i % 2:
                chunks.append(("en", english.g2p(english.normalize(part)), None))
            else:
                norm = chinese.normalize(part)
                phones, word2ph = chinese.g2p(norm)
                if phones:
                    chunks.append(("zh", phones, (norm, word2ph)))
        return chunks
