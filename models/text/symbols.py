"""Upstream GPT-SoVITS phone tables, v1 (322 symbols) and v2 (732), in upstream's id order.

Phone ids index these lists, so the order is part of every checkpoint: v1 is the code-point sort of the union of
all groups below; v2 is v1 followed by the Japanese pitch marks, then the sorted Korean jamo, then the sorted
Cantonese (Jyutping, prefixed "Y") symbols. tests/test_text_symbols.py checks both lists against upstream.
"""
from __future__ import annotations

PAD = "_"
PUNCTUATION = ["!", "?", "…", ",", ".", "-"]
SILENCES = ["SP", "SP2", "SP3", "UNK"]

# Mandarin: initials ("AA", "EE", "OO" stand for the empty initial before a/e/o) and finals with tones 1-5
ZH_INITIALS = "AA EE OO b c ch d f g h j k l m n p q r s sh t w x y z zh".split()
ZH_FINALS = ("E En a ai an ang ao e ei en eng er i i0 ia ian iang iao ie in ing iong ir iu o ong ou u ua uai uan "
             "uang ui un uo v van ve vn").split()
ZH_PHONES = ZH_INITIALS + [f + str(tone) for tone in range(1, 6) for f in ZH_FINALS]

JA_PHONES = "I N U a b by ch cl d dy e f g gy h hy i j k ky m my n ny o p py r ry s sh t ts u v w y z".split()

# English: CMUdict ARPAbet, vowels with stress 0-2; "ER" and "IH" also bare (upstream lists them so)
ARPA_VOWELS = "AA AE AH AO AW AY EH ER EY IH IY OW OY UH UW".split()
ARPA_CONSONANTS = "B CH D DH F G HH JH K L M N NG P R S SH T TH V W Y Z ZH".split()
ARPA_PHONES = [v + s for v in ARPA_VOWELS for s in "012"] + ["ER", "IH"] + ARPA_CONSONANTS

JA_PITCH_MARKS = ["[", "]"]  # v2 only: rising / falling pitch
KO_PHONES = list("ㄱㄴㄷㄹㅁㅂㅅㅇㅈㅊㅋㅌㅍㅎㄲㄸㅃㅆㅉㅏㅓㅗㅜㅡㅣㅐㅔ空停")

# Cantonese: the 19 Jyutping initials bare, finals with tones 1-6, and a few finals also bare
YUE_INITIALS = "b p m f d t n l g k ng h gw kw w z c s j".split()
YUE_FINALS = ("a aa aai aak aam aan aang aap aat aau ai ak am an ang ap at au e ei ek eng eoi eon eot g i ik im in "
              "ing ip it iu k m n o oe oek oeng oi ok on ong ot ou p t u uk ui un ung ut yu yun yut").split()
YUE_BARE_FINALS = "a aa ai ak au e o oi ok on ou uk".split()
YUE_PHONES = ["Y" + p for p in YUE_INITIALS + YUE_BARE_FINALS] + \
             ["Y" + f + str(tone) for f in YUE_FINALS for tone in range(1, 7)]

SYMBOLS_V1 = sorted(set([PAD] + ZH_PHONES + JA_PHONES + PUNCTUATION + SILENCES + ARPA_PHONES))
SYMBOLS_V2 = SYMBOLS_V1 + JA_PITCH_MARKS + sorted(set(KO_PHONES)) + sorted(set(YUE_PHONES))

SYMBOLS = {"v1": SYMBOLS_V1, "v2": SYMBOLS_V2}
SYMBOL_TO_ID = {version: {s: i for i, s in enumerate(table)} for version, table in SYMBOLS.items()}
