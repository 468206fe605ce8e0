"""Mandarin text → upstream GPT-SoVITS phones (initial + toned final per character), offline.

Pipeline as upstream's pypinyin front-end (`text.chinese`): normalise (numbers, dates, times, units… read out in
characters; punctuation mapped to `!?…,.-`; everything else but Han dropped), segment and POS-tag with jieba,
merge segments for tone sandhi (不, 一, reduplication, third-tone runs, 儿), read pinyin with pypinyin, apply
sandhi (不/一 tone changes, neutral tones, third-tone sandhi), map each syllable to the opencpop phone pair.
Upstream v2 can swap pypinyin for the g2pW polyphone model; that needs a model download and is not used here.
"""
from __future__ import annotations

import functools
import logging
import re

from specdec.errors import SpecdecError
from specdec.models.text.symbols import PUNCTUATION
from specdec.models.text.zh_words import NEUTRAL_TONE_WORDS, NOT_NEUTRAL_TONE_WORDS, SIMPLIFIED, TRADITIONAL

# ---------------------------------------------------------------------------------------------- numbers → words
DIGITS = "零一二三四五六七八九"
UNITS = {1: "十", 2: "百", 3: "千", 4: "万", 8: "亿"}  # a power of ten → its unit


def read_digits(digits: str, alt_one: bool = False) -> str:
    """Digit by digit: "110" → 一一零 (幺幺零 with alt_one, as in phone numbers)."""
    said = "".join(DIGITS[int(d)] for d in digits)
    return said.replace("一", "幺") if alt_one else said


def _cardinal(digits: str, use_zero: bool = True) -> list[str]:
    stripped = digits.lstrip("0")
    if not stripped:
        return []
    if len(stripped) == 1:  # a dropped leading zero is said: 1005 → 一千零五
        return [DIGITS[0], DIGITS[int(stripped)]] if use_zero and len(stripped) < len(digits) else [DIGITS[int(stripped)]]
    power = max(p for p in UNITS if p < len(stripped))
    return _cardinal(digits[:-power]) + [UNITS[power]] + _cardinal(digits[-power:])


def read_cardinal(digits: str) -> str:
    """"1234" → 一千二百三十四; "10"-"19" drop the leading 一."""
    if not digits:
        return ""
    said = _cardinal(digits.lstrip("0")) or [DIGITS[0]]
    return "".join(said[1:] if said[:2] == [DIGITS[1], UNITS[1]] else said)


def read_number(number: str) -> str:
    """"3.20" → 三点二, ".5" → 零点五; one trailing zero is kept only if every decimal is zero."""
    integer, _, decimals = number.partition(".")
    said = read_cardinal(integer)
    decimals = decimals.rstrip("0") + "0" if decimals.endswith("0") else decimals
    return (said or DIGITS[0]) + "点" + read_digits(decimals) if decimals else said


def _read_clock_part(digits: str) -> str:
    return (DIGITS[0] if digits.startswith("0") else "") + read_number(digits.lstrip("0"))


def _time(m: re.Match) -> str:
    """"8:30" → 八点半, "14:05:09" → 十四点零五分零九秒, "8:00~9:30" → 八点至九点半 (upstream tests the
    first minute for 半 in both halves of a range)."""
    groups = m.groups()
    halves = [groups[0:4], groups[5:9]] if len(groups) > 5 else [groups[0:4]]
    first_minute = groups[1]
    said = []
    for hour, minute, _, second in halves:
        part = read_number(hour) + "点"
        if minute.lstrip("0"):
            part += "半" if int(first_minute) == 30 else _read_clock_part(minute) + "分"
        if second and second.lstrip("0"):
            part += _read_clock_part(second) + "秒"
        said.append(part)
    return "至".join(said)


def _date(m: re.Match) -> str:
    year, month, day, day_word = m.group(1), m.group(3), m.group(5), m.group(9)
    return (read_digits(year) + "年" if year else "") + (read_cardinal(month) + "月" if month else "") + \
           (read_cardinal(day) + day_word if day else "")


def _signed(m: re.Match, sign_word: str = "负") -> str:
    return (sign_word if m.group(1) else "") + read_number(m.group(2))


def _number(m: re.Match) -> str:
    return read_number(m.group(5)) if m.group(5) else _signed(m)


def _quantity(m: re.Match) -> str:
    said = read_number(m.group(1))
    return ("两" if said == "二" else said) + {"+": "多", None: ""}.get(m.group(2), m.group(2)) + m.group(3)


def _phone(m: re.Match) -> str:
    return "，".join(read_digits(part, alt_one=True) for part in m.group(0).split("-"))


QUANTIFIERS = ("(处|台|架|枚|趟|幅|平|方|堵|间|床|株|批|项|例|列|篇|栋|注|亩|封|艘|把|目|套|段|人|所|朵|匹|张|座|回|场|尾|条|个|首|"
               "阙|阵|网|炮|顶|丘|棵|只|支|袭|辆|挑|担|颗|壳|窠|曲|墙|群|腔|砣|座|客|贯|扎|捆|刀|令|打|手|罗|坡|山|岭|江|溪|钟|队|单|双|"
               "对|出|口|头|脚|板|跳|枝|件|贴|针|线|管|名|位|身|堂|课|本|页|家|户|层|丝|毫|厘|分|钱|两|斤|担|铢|石|钧|锱|忽|(千|毫|微)克|"
               "毫|厘|(公)分|分|寸|尺|丈|里|寻|常|铺|程|(千|分|厘|毫|微)米|米|撮|勺|合|升|斗|石|盘|碗|碟|叠|桶|笼|盆|盒|杯|钟|斛|锅|簋|"
               "篮|盘|桶|罐|瓶|壶|卮|盏|箩|箱|煲|啖|袋|钵|年|月|日|季|刻|时|周|天|秒|分|小时|旬|纪|岁|世|更|夜|春|夏|秋|冬|代|伏|辈|丸|"
               "泡|粒|颗|幢|堆|条|根|支|道|面|片|张|颗|块|元|(亿|千万|百万|万|千|百)|(亿|千万|百万|万|千|百|美|)元|"
               "(亿|千万|百万|万|千|百|十|)吨|(亿|千万|百万|万|千|百|)块|角|毛|分)")
_UNIT_WORDS = "%|°C|℃|度|摄氏度|cm2|cm²|cm3|cm³|cm|db|ds|kg|km|m2|m²|m³|m3|ml|m|mm|s"
MEASURES = {"cm2": "平方厘米", "cm²": "平方厘米", "cm3": "立方厘米", "cm³": "立方厘米", "cm": "厘米", "db": "分贝",
            "ds": "毫秒", "kg": "千克", "km": "千米", "m2": "平方米", "m²": "平方米", "m³": "立方米", "m3": "立方米",
            "ml": "毫升", "m": "米", "mm": "毫米", "s": "秒"}  # replaced as plain substrings, in this order
POWERS = dict(zip("⁰¹²³⁴⁵⁶⁷⁸⁹ˣʸⁿ", "0123456789xyn"))
OPERATORS = {"+": "加", "-": "减", "×": "乘", "÷": "除", "=": "等于"}
_OPERAND = r"((-?)((\d+)(\.\d+)?[⁰¹²³⁴⁵⁶⁷⁸⁹ˣʸⁿ]*)|(\.\d+[⁰¹²³⁴⁵⁶⁷⁸⁹ˣʸⁿ]*)|([A-Za-z][⁰¹²³⁴⁵⁶⁷⁸⁹ˣʸⁿ]*))"
_ARITHMETIC = re.compile(_OPERAND + r"([\+\-\×÷=])" + _OPERAND)
_CLOCK = r"([0-1]?[0-9]|2[0-3]):([0-5][0-9])(:([0-5][0-9]))?"
_SIGNED = r"((-?)((\d+)(\.\d+)?))"
_NUMBER = re.compile(r"(-?)((\d+)(\.\d+)?)|(\.(\d+))")
_RULES = [  # upstream's order: each rule sees the text the earlier ones left
    (r"(\d{4}|\d{2})年((0?[1-9]|1[0-2])月)?(((0?[1-9])|((1|2)[0-9])|30|31)([日号]))?", _date),
    (r"(\d{4})([- /.])(0[1-9]|1[012])\2(0[1-9]|[12][0-9]|3[01])",
     lambda m: f"{read_digits(m.group(1))}年{read_cardinal(m.group(3))}月{read_cardinal(m.group(4))}日"),
    (_CLOCK + r"(~|-)" + _CLOCK, _time),
    (_CLOCK, _time),
    (rf"((-?)((\d+)(\.\d+)?)|(\.(\d+)))({_UNIT_WORDS})[~]((-?)((\d+)(\.\d+)?)|(\.(\d+)))({_UNIT_WORDS})",
     lambda m: m.group(0).replace("~", "至")),
    (r"(-?)(\d+(\.\d+)?)(°C|℃|度|摄氏度)", lambda m: _signed(m, "零下") + ("摄氏度" if m.group(4) == "摄氏度" else "度")),
]
_RULES_AFTER_ARITHMETIC = [
    (r"[⁰¹²³⁴⁵⁶⁷⁸⁹ˣʸⁿ]+", lambda m: "的" + "".join(POWERS[c] for c in m.group(0)) + "次方"),
    (r"(-?)(\d+)/(\d+)", lambda m: ("负" if m.group(1) else "") + f"{read_number(m.group(3))}分之{read_number(m.group(2))}"),
    (r"(-?)(\d+(\.\d+)?)%", lambda m: ("负" if m.group(1) else "") + "百分之" + read_number(m.group(2))),
    (r"(?<!\d)((\+?86 ?)?1([38]\d|5[0-35-9]|7[678]|9[89])\d{8})(?!\d)",
     lambda m: "，".join(read_digits(p, alt_one=True) for p in m.group(0).strip("+").split())),
    (r"(?<!\d)((0(10|2[1-3]|[3-9]\d{2})-?)?[1-9]\d{6,7})(?!\d)", _phone),
    (r"(400)(-)?\d{3}(-)?\d{4}", _phone),
    (rf"(?<![\d\+\-\×÷=]){_SIGNED}[-~]{_SIGNED}(?![\d\+\-\×÷=])",
     lambda m: _NUMBER.sub(_number, m.group(1)) + "到" + _NUMBER.sub(_number, m.group(6))),
    (r"(-)(\d+)", _signed),
    (r"((\d+)(\.\d+)(\.\d+)?(\.\d+)+)", lambda m: "".join("点" if c == "." else read_number(c) for c in m.group(1))),
    (r"(-?)((\d+)(\.\d+))|(\.(\d+))", _number),
    (r"(\d+)([多余几\+])?" + QUANTIFIERS, _quantity),
    (r"\d{3}\d*", lambda m: read_digits(m.group(0), alt_one=True)),  # long bare numbers are codes: 幺二三
    (_NUMBER.pattern, _number),
]
_RULES = [(re.compile(p), f) for p, f in _RULES]
_RULES_AFTER_ARITHMETIC = [(re.compile(p), f) for p, f in _RULES_AFTER_ARITHMETIC]
SYMBOL_WORDS = {**dict(zip("①②③④⑤⑥⑦⑧⑨⑩", "一二三四五六七八九十")),
                "α": "阿尔法", "β": "贝塔", "γ": "伽玛", "Γ": "伽玛", "δ": "德尔塔", "Δ": "德尔塔", "ε": "艾普西龙",
                "ζ": "捷塔", "η": "依塔", "θ": "西塔", "Θ": "西塔", "ι": "艾欧塔", "κ": "喀帕", "λ": "拉姆达", "Λ": "拉姆达",
                "μ": "缪", "ν": "拗", "ξ": "克西", "Ξ": "克西", "ο": "欧米克伦", "π": "派", "Π": "派", "ρ": "肉",
                "ς": "西格玛", "Σ": "西格玛", "σ": "西格玛", "τ": "套", "υ": "宇普西龙", "φ": "服艾", "Φ": "服艾",
                "χ": "器", "ψ": "普赛", "Ψ": "普赛", "ω": "欧米伽", "Ω": "欧米伽",
                "/": "每", "+": "加", "-": "减", "×": "乘", "÷": "除", "=": "等"}
PUNCT_MAP = {"：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": ".", "·": ",", "、": ",",
             "...": "…", "$": ".", "/": ",", "—": "-", "~": "…", "～": "…"}
_PUNCT_MAP = re.compile("|".join(re.escape(k) for k in PUNCT_MAP))
TO_SIMPLIFIED = str.maketrans(TRADITIONAL, SIMPLIFIED)
FULL_WIDTH = {0xFF10 + i: ord("0") + i for i in range(10)} | {0xFF21 + i: ord("A") + i for i in range(26)} | \
              {0xFF41 + i: ord("a") + i for i in range(26)} | {0x3000: ord(" ")}


def _normalize_sentence(s: str) -> str:
    s = s.translate(TO_SIMPLIFIED).translate(FULL_WIDTH)
    for pattern, replace in _RULES:
        s = pattern.sub(replace, s)
    for unit, word in MEASURES.items():
        s = s.replace(unit, word)
    while _ARITHMETIC.search(s):
        s = _ARITHMETIC.sub(lambda m: m.group(1) + OPERATORS[m.group(8)] + m.group(9), s)
    for pattern, replace in _RULES_AFTER_ARITHMETIC:
        s = pattern.sub(replace, s)
    s = "".join(SYMBOL_WORDS.get(c, c) for c in s)
    return re.sub(r"[-——《》【】<=>{}()（）#&@“”^_|\\]", "", s)


def normalize(text: str) -> str:
    """Upstream's Mandarin normalisation: only Han characters and the phone punctuation `!?…,.-` remain."""
    text = re.sub(r"[——《》【】<>{}()（）#&@“”^_|\\]", "", text.replace(" ", ""))
    sentences = re.split(r"\n+", re.sub(r"([：、，；。？！,;?!][”’]?)", r"\1\n", text).strip())
    out = []
    for s in sentences:
        s = _normalize_sentence(s.strip()).replace("嗯", "恩").replace("呣", "母")
        s = _PUNCT_MAP.sub(lambda m: PUNCT_MAP[m.group(0)], s)
        out.append(re.sub(r"[^\u4e00-\u9fa5" + "".join(PUNCTUATION) + r"]+", "", s))
    marks = re.escape("".join(PUNCTUATION))
    return re.sub(f"([{marks}])[{marks}]+", r"\1", "".join(out))  # repeated punctuation leaks the prompt


# ---------------------------------------------------------------------------------------------- tone sandhi
PARTICLES = "吧呢哈啊呐噻嘛吖嗨呐哦哒额滴哩哟喽啰耶喔诶"
SANDHI_PUNCT = "：，；。？！“”‘’':,;.?!"


@functools.cache
def _jieba():
    try:
        import jieba
        import jieba.posseg
        import pypinyin  # noqa: F401  (checked here: both come with the zh extra)
    except ImportError:
        raise SpecdecError("Mandarin text needs jieba and pypinyin: pip install 'specdec[zh]'") from None
    jieba.setLogLevel(logging.CRITICAL)
    return jieba


def _pinyin(word: str, style: str) -> list[str]:
    """pypinyin's strict initials ("INITIALS") or finals with tone digit ("FINALS_TONE3"), neutral tone = 5."""
    _jieba()
    from pypinyin import Style, lazy_pinyin
    return lazy_pinyin(word, neutral_tone_with_five=True, style=getattr(Style, style))


@functools.cache
def _finals(word: str) -> list[str]:
    return _pinyin(word, "FINALS_TONE3")


def _tone(final: str, tone: str) -> str:
    return final[:-1] + tone


def _all_third(finals: list[str]) -> bool:
    return all(f[-1] == "3" for f in finals)


def _halves(word: str) -> list[str]:
    """Split a word at its shortest search-mode sub-word: [head, rest] or [rest, tail]."""
    first = sorted(_jieba().cut_for_search(word), key=len)[0]
    return [first, word[len(first):]] if word.find(first) == 0 else [word[:-len(first)], first]


def _bu(word: str, finals: list[str]) -> list[str]:
    if len(word) == 3 and word[1] == "不":  # 看不懂
        finals[1] = _tone(finals[1], "5")
        return finals
    for i, c in enumerate(word[:-1]):
        if c == "不" and finals[i + 1][-1] == "4":  # 不怕: bu2
            finals[i] = _tone(finals[i], "2")
    return finals


def _yi(word: str, finals: list[str]) -> list[str]:
    if "一" in word and all(c.isnumeric() for c in word if c != "一"):
        return finals  # a number: 一零零
    if len(word) == 3 and word[1] == "一" and word[0] == word[2]:  # 看一看
        finals[1] = _tone(finals[1], "5")
    elif word.startswith("第一"):
        finals[1] = _tone(finals[1], "1")
    else:
        for i, c in enumerate(word[:-1]):
            if c == "一":  # yi2 before a fourth tone, yi4 before the others (not before punctuation)
                if finals[i + 1][-1] == "4":
                    finals[i] = _tone(finals[i], "2")
                elif word[i + 1] not in SANDHI_PUNCT:
                    finals[i] = _tone(finals[i], "4")
    return finals


def _neutral(word: str, pos: str, finals: list[str]) -> list[str]:
    for j in range(1, len(word)):  # reduplicated nouns, verbs, adjectives: 奶奶, 试试
        if word[j] == word[j - 1] and pos[0] in "nva" and word not in NOT_NEUTRAL_TONE_WORDS:
            finals[j] = _tone(finals[j], "5")
    ge = word.find("个")
    if word[-1] in PARTICLES or word[-1] in "的地得":
        finals[-1] = _tone(finals[-1], "5")
    elif len(word) == 1 and word in "了着过" and pos in ("ul", "uz", "ug"):
        finals[-1] = _tone(finals[-1], "5")
    elif len(word) > 1 and word[-1] in "们子" and pos in ("r", "n") and word not in NOT_NEUTRAL_TONE_WORDS:
        finals[-1] = _tone(finals[-1], "5")
    elif len(word) > 1 and word[-1] in "上下里" and pos in ("s", "l", "f"):  # 桌上, 家里
        finals[-1] = _tone(finals[-1], "5")
    elif len(word) > 1 and word[-1] in "来去" and word[-2] in "上下进出回过起开":  # 上来, 下去
        finals[-1] = _tone(finals[-1], "5")
    elif (ge >= 1 and (word[ge - 1].isnumeric() or word[ge - 1] in "几有两半多各整每做是")) or word == "个":
        finals[ge] = _tone(finals[ge], "5")
    elif word in NEUTRAL_TONE_WORDS or word[-2:] in NEUTRAL_TONE_WORDS:
        finals[-1] = _tone(finals[-1], "5")
    head, rest = _halves(word)
    parts = [finals[:len(head)], finals[len(head):]]
    for part, sub in zip(parts, (head, rest)):
        if sub in NEUTRAL_TONE_WORDS or sub[-2:] in NEUTRAL_TONE_WORDS:
            part[-1] = _tone(part[-1], "5")
    return parts[0] + parts[1]


def _third(word: str, finals: list[str]) -> list[str]:
    if len(word) == 2 and _all_third(finals):
        finals[0] = _tone(finals[0], "2")
    elif len(word) == 3:
        head, _ = _halves(word)
        if _all_third(finals):
            if len(head) == 2:  # 蒙古/包
                finals[0], finals[1] = _tone(finals[0], "2"), _tone(finals[1], "2")
            elif len(head) == 1:  # 纸/老虎
                finals[1] = _tone(finals[1], "2")
        else:
            parts = [finals[:len(head)], finals[len(head):]]
            for i, part in enumerate(parts):
                if _all_third(part) and len(part) == 2:  # 所有/人
                    part[0] = _tone(part[0], "2")
                elif i == 1 and not _all_third(part) and part[0][-1] == "3" and parts[0][-1][-1] == "3":  # 好/喜欢
                    parts[0][-1] = _tone(parts[0][-1], "2")
            finals = parts[0] + parts[1]
    elif len(word) == 4:  # idioms: two two-character halves
        finals = [_tone(f, "2") if i == 0 and _all_third(half) else f
                  for half in (finals[:2], finals[2:]) for i, f in enumerate(half)]
    return finals


def sandhi(word: str, pos: str, finals: list[str]) -> list[str]:
    """Tone changes of one merged word's finals (tone digit last)."""
    return _third(word, _neutral(word, pos, _yi(word, _bu(word, list(finals)))))


def _merge_bu(seg):
    out, last = [], ""
    for word, pos in seg:
        if last == "不":
            word = last + word
        if word != "不":
            out.append([word, pos])
        last = word
    if last == "不":
        out.append([last, "d"])
    return out


def _merge_yi(seg):
    out, i = [], 0
    while i < len(seg):  # 听 一 听 → 听一听 (verbs)
        word, pos = seg[i]
        if 0 < i < len(seg) - 1 and word == "一":
            last = out[-1] if out else seg[i - 1]
            if last[0] == seg[i + 1][0] and last[1] == "v" and seg[i + 1][1] == "v":
                out[-1] = [last[0] + "一" + seg[i + 1][0], last[1]]
                i += 2
                continue
        out.append([word, pos])
        i += 1
    merged = []
    for word, pos in out:  # a lone 一 takes the next word
        if merged and merged[-1][0] == "一":
            merged[-1][0] += word
        else:
            merged.append([word, pos])
    return merged


def _merge_runs(seg, joinable):
    """Join a word to the previous one when joinable(prev_finals, finals), neither was joined already, the
    previous is not a reduplication (it needs the neutral tone) and the result has at most 3 characters."""
    finals = [_finals(w) for w, _ in seg]
    out, joined = [], [False] * len(seg)
    for i, (word, pos) in enumerate(seg):
        prev = seg[i - 1][0] if i else ""
        if i and joinable(finals[i - 1], finals[i]) and not joined[i - 1]:
            if not (len(prev) == 2 and prev[0] == prev[1]) and len(prev) + len(word) <= 3:
                out[-1][0] += word
                joined[i] = True
                continue
        out.append([word, pos])
    return out


def _merge_reduplication(seg):
    out = []
    for word, pos in seg:
        if out and word == out[-1][0]:  # 试 试 → 试试
            out[-1][0] += word
        else:
            out.append([word, pos])
    return out


def merge_for_sandhi(seg: list[tuple[str, str]]) -> list[list[str]]:
    """jieba's (word, pos) list → the words tone sandhi reads as units."""
    seg = _merge_yi(_merge_bu(seg))
    seg = _merge_reduplication(seg)
    seg = _merge_runs(seg, lambda a, b: _all_third(a) and _all_third(b))
    seg = _merge_runs(seg, lambda a, b: a[-1][-1] == "3" and b[0][-1] == "3")
    return _merge_er(seg)


def _merge_er(seg):
    out = []
    for i, (word, pos) in enumerate(seg):
        if i and word == "儿" and seg[i - 1][0] != "#":
            out[-1][0] += word
        else:
            out.append([word, pos])
    return out


# ---------------------------------------------------------------------------------------------- pinyin → phones
RETROFLEX, DENTAL = ("zh", "ch", "sh", "r"), ("z", "c", "s")
INITIALS = ("zh", "ch", "sh", "b", "p", "m", "f", "d", "t", "n", "l", "g", "k", "h", "j", "q", "x", "r", "z", "c", "s",
            "y", "w")


def spell(initial: str, final: str) -> str:
    """pypinyin's strict initial + toneless final → the syllable as written: ("", "iou") → "you"."""
    if initial:
        return initial + {"uei": "ui", "iou": "iu", "uen": "un"}.get(final, final)
    whole = {"ing": "ying", "i": "yi", "in": "yin", "u": "wu"}
    if final in whole:
        return whole[final]
    return {"v": "yu", "i": "y", "u": "w"}.get(final[0], final[0]) + final[1:]


def syllable_phones(syllable: str) -> tuple[str, str]:
    """A written syllable → (initial, toneless final) symbols: "zhi" → ("zh", "ir"), "an" → ("AA", "an")."""
    initial = next((i for i in INITIALS if syllable.startswith(i) and len(syllable) > len(i)), None)
    if initial is None:  # no initial: a/e/o-syllables get a glottal placeholder
        return {"a": "AA", "e": "EE", "o": "OO"}[syllable[0]], syllable
    final = syllable[len(initial):]
    if final == "i" and initial in RETROFLEX + DENTAL:
        final = "ir" if initial in RETROFLEX else "i0"
    elif initial in ("j", "q", "x", "y") and final.startswith("u"):
        final = "v" + final[1:]
    elif initial == "y":
        final = {"an": "En", "e": "E"}.get(final, final)
    return initial, final


def g2p(text: str) -> tuple[list[str], list[int]]:
    """Normalised text → (phones, phones per character)."""
    marks = re.escape("".join(PUNCTUATION))
    phones, word2ph = [], []
    for sentence in (s for s in re.split(rf"(?<=[{marks}])\s*", text) if s.strip()):
        sentence = re.sub("[a-zA-Z]+", "", sentence)
        seg = merge_for_sandhi([tuple(p) for p in _jieba().posseg.lcut(sentence)])
        pairs = []
        for word, pos in seg:
            if pos == "eng":
                continue
            pairs += zip(_pinyin(word, "INITIALS"), sandhi(word, pos, _finals(word)), word)
        for initial, final, char in pairs:
            if initial == final:  # punctuation reads as itself
                if initial not in PUNCTUATION:
                    raise SpecdecError(f"no Mandarin reading known for {char!r}")
                phones.append(initial)
                word2ph.append(1)
            else:
                c, v = syllable_phones(spell(initial, final[:-1]))
                phones += [c, v + final[-1]]
                word2ph.append(2)
    return phones, word2ph
