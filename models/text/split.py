"""Upstream GPT-SoVITS's text splitting: methods cut0-cut5 and the segment clean-up around them.

    cut0  no split                      cut3  on "。"
    cut1  every 4 sentence pieces       cut4  on "." not between digits
    cut2  pieces up to >50 characters   cut5  after every punctuation mark except a decimal point

A piece ends after any of SPLITS. Around the method (upstream's pre_seg_text): a short first sentence gets a
leading stop, pieces under 5 characters merge with the next, each segment ends in a stop, over-long segments are
cut at punctuation.
"""
from __future__ import annotations

import re

SPLITS = set("，。？！,.?!~:：—…")
PUNCT_AND_SPACE = set("!?…,.- ")
CUT5_MARKS = set(",.;?!、，。？！;：…")
MIN_SEGMENT = 5  # characters: shorter segments merge with the next
MAX_SEGMENT = 510  # characters: BERT's window


def _speakable(pieces: list[str]) -> list[str]:
    return [p for p in pieces if not set(p) <= PUNCT_AND_SPACE]


def _sentence_pieces(text: str) -> list[str]:
    """Cut after every split mark; the text is given a final "。" if it lacks one."""
    text = text.replace("……", "。").replace("——", "，")
    if text[-1] not in SPLITS:
        text += "。"
    return re.findall(f"[^{re.escape(''.join(SPLITS))}]*[{re.escape(''.join(SPLITS))}]", text)


def cut0(text: str) -> list[str]:
    return _speakable([text])


def cut1(text: str) -> list[str]:
    text = text.strip("\n")
    pieces = _sentence_pieces(text)
    if len(pieces) <= 4:
        return _speakable([text])
    # groups of 4; the last group also takes the 1-4 pieces left after it (upstream's slicing)
    starts = list(range(0, len(pieces), 4))[:-1]
    ends = starts[1:] + [len(pieces)]
    return _speakable(["".join(pieces[a:b]) for a, b in zip(starts, ends)])


def cut2(text: str) -> list[str]:
    text = text.strip("\n")
    pieces = _sentence_pieces(text)
    if len(pieces) < 2:
        return [text]
    out, current = [], ""
    for piece in pieces:
        current += piece
        if len(current) > 50:
            out.append(current)
            current = ""
    if current:
        out.append(current)
    if len(out) > 1 and len(out[-1]) < 50:  # a short tail joins the previous segment
        out[-2:] = [out[-2] + out[-1]]
    return _speakable(out)


def cut3(text: str) -> list[str]:
    return _speakable(text.strip("\n").strip("。").split("。"))


def cut4(text: str) -> list[str]:
    return _speakable(re.split(r"(?<!\d)\.(?!\d)", text.strip("\n").strip(".")))


def cut5(text: str) -> list[str]:
    text = text.strip("\n")
    out, start = [], 0
    for i, c in enumerate(text):
        decimal_point = c == "." and 0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit()
        if c in CUT5_MARKS and not decimal_point:
            out.append(text[start:i + 1])
            start = i + 1
    if start < len(text):
        out.append(text[start:])
    return [p for p in out if not set(p) <= CUT5_MARKS]


METHODS = {"cut0": cut0, "cut1": cut1, "cut2": cut2, "cut3": cut3, "cut4": cut4, "cut5": cut5}


def merge_short(segments: list[str], threshold: int = MIN_SEGMENT) -> list[str]:
    """Join consecutive segments until each is at least `threshold` characters; a short tail joins the last."""
    if len(segments) < 2:
        return segments
    out, current = [], ""
    for s in segments:
        current += s
        if len(current) >= threshold:
            out.append(current)
            current = ""
    if current:
        if out:
            out[-1] += current
        else:
            out.append(current)
    return out


def split_long(text: str, max_len: int = MAX_SEGMENT) -> list[str]:
    """Cut a segment over `max_len` characters at punctuation, greedily."""
    out, current = [], ""
    for part in re.split(f"([{re.escape(''.join(SPLITS))}])", text):
        if len(current + part) > max_len:
            out.append(current)
            current = part
        else:
            current += part
    if current:
        out.append(current)
    return out


def split_text(text: str, method: str, stop: str) -> list[str]:
    """Segments to synthesise one by one; `stop` ("." for English, "。" otherwise) ends segments lacking one."""
    text = re.sub(r"([!?…,.\-])[!?…,.\-]+", r"\1", text).strip("\n")  # repeated punctuation leaks the prompt
    if not text:
        return []
    first = re.split(f"[{re.escape(''.join(SPLITS))}]", text)[0].strip()
    if text[0] not in SPLITS and len(first) < 4:
        text = stop + text
    pieces = "\n".join(METHODS[method](text))
    pieces = re.sub(r"\n+", "\n", pieces).split("\n")
    segments = []
    for s in merge_short([p for p in pieces if p not in ("", " ")]):
        if not s.strip() or not re.sub(r"\W+", "", s):
            continue  # blank or punctuation only
        if s[-1] not in SPLITS:
            s += stop
        segments.extend(split_long(s) if len(s) > MAX_SEGMENT else [s])
    return segments
