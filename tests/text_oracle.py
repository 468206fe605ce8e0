"""Upstream's text front-end (gpt-sovits-cpufast) as an oracle, importable offline.

Upstream imports jieba_fast (a C build of jieba: same dictionary, same segmentation), which is aliased to jieba;
TTS_infer_pack's package __init__ (audio I/O) and the language detector (a model download) are bypassed: only the
text modules are used.
"""
from __future__ import annotations

import os
import sys
import types

from upstream import require_upstream


def text_oracle():
    """(TextPreprocessor instance without BERT, text_segmentation_method module)."""
    root = require_upstream()
    import jieba
    import jieba.posseg
    sys.modules.setdefault("jieba_fast", jieba)
    sys.modules.setdefault("jieba_fast.posseg", jieba.posseg)
    if "TTS_infer_pack" not in sys.modules:
        pkg = types.ModuleType("TTS_infer_pack")
        pkg.__path__ = [os.path.join(root, "TTS_infer_pack")]
        sys.modules["TTS_infer_pack"] = pkg
    if "text.LangSegmenter" not in sys.modules:
        stub = types.ModuleType("text.LangSegmenter")
        stub.LangSegmenter = None
        sys.modules["text.LangSegmenter"] = stub
    from TTS_infer_pack import TextPreprocessor, text_segmentation_method
    return TextPreprocessor.TextPreprocessor(None, None, "cpu"), text_segmentation_method
