"""Text splitting against upstream's cut0-cut5 and its segment clean-up (TextPreprocessor.pre_seg_text)."""
import re

import pytest

from specdec.errors import SpecdecError
from specdec.models.text import Frontend
from specdec.models.text.split import METHODS
from text_oracle import text_oracle

TEXTS = [
    "Hello there. This is a test, of splitting! Is it ok? Yes. It costs 3.50 dollars... Really?! Fine; done: end",
    "Hi. One. Two. Three. Four. Five. Six. Seven. Eight. Nine, ten, eleven, twelve, thirteen.",
    "今天天气很好，我们去公园散步吧！你觉得怎么样？我觉得不错。明天……也许会下雨——谁知道呢。",
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "No punctuation at all in this rather long sentence that keeps going well past the fifty character mark",
    "Short.\n\nLines\nwith breaks. And version 2.0.1 of 3.14 things、then，full-width：marks;too",
    "A" * 30 + ", " + "b" * 300 + ". " + "c" * 300 + "!",
    "Ok",
]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_methods_equal_upstream(method):
    _, seg = text_oracle()
    for text in TEXTS:
        assert "\n".join(METHODS[method](text)) == seg.get_method(method)(text), text


@pytest.mark.parametrize("method", sorted(METHODS))
def test_segments_equal_upstream(method):
    pre, _ = text_oracle()
    f = Frontend("v2")
    for text in TEXTS:
        lang = "zh" if re.search(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]", text) else "en"  # upstream: the user's
        expected = pre.pre_seg_text(pre.replace_consecutive_punctuation(text), lang, method)
        assert f.split(text, method) == expected, text


def test_unknown_method():
    with pytest.raises(SpecdecError):
        Frontend("v2").split("Hello.", "cut9")


def test_nothing_to_split():
    assert Frontend("v2").split("\n\n", "cut1") == []
    assert Frontend("v2").split("?!", "cut0") == []
