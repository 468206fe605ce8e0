"""The demo voice recipe's glue: corpus → tokens → training examples → voices → the shipped bundle.

Each function reads and writes plain files under the data folder, so every step of bench/demo_voice/build.py
(and the tiny end-to-end test) can resume or be re-run on its own.
"""
from __future__ import annotations

import math
import os
from collections import Counter, defaultdict

import soundfile as sf
import torch
import torch.nn.functional as F

from specdec.corpus import Clip
from specdec.voices import Voice


def read_clip(data_dir: str, clip: Clip) -> torch.Tensor:
    wav, _ = sf.read(os.path.join(data_dir, clip.wav), dtype="float32")
    return torch.from_numpy(wav)


def tokenize_corpus(data_dir: str, clips: list[Clip], progress=None) -> dict[str, torch.Tensor]:
    """Every clip's phonetic units (`tokenizer.phone_units` of its `.segs`) → tokens.safetensors ({clip id: int16
    [T]}) in data_dir."""
    from safetensors.torch import save_file

    from specdec.corpus import read_segments, segments_path
    from specdec.models.tokenizer import N_UNITS, n_frames, phone_units
    tokens = {}
    for i, c in enumerate(clips):
        wav = os.path.join(data_dir, c.wav)
        tokens[c.id] = phone_units(read_segments(segments_path(wav)), n_frames(sf.info(wav).frames))
        if progress:
            progress(i + 1, len(clips))
    path = os.path.join(data_dir, "tokens.safetensors")
    save_file({k: v.to(torch.int16) for k, v in tokens.items()}, path + ".tmp", metadata={"n_tokens": str(N_UNITS)})
    os.replace(path + ".tmp", path)
    return tokens


def train_tokenizer(data_dir: str, clips: list[Clip], tokens: dict[str, torch.Tensor], steps: int = 1500,
                    work_dir: str | None = None, progress=None, seed: int = 0) -> tuple[object, dict]:
    """Train `tokenizer.Tokenizer` (audio → units) on the training clips' units: cross-entropy on random 64-token
    crops, AdamW, cosine lr. Resumable from work_dir. Returns the network and {"steps", "held_out_accuracy"} (frame
    accuracy of `encode` on the test clips)."""
    import random

    from specdec.models import weights
    from specdec.models.tokenizer import Tokenizer, clip_mel
    rng = random.Random(seed)
    train = [(clip_mel(read_clip(data_dir, c)), tokens[c.id]) for c in clips if c.split == "train"]
    with torch.random.fork_rng():  # a reproducible init without touching the caller's generator
        torch.manual_seed(seed)
        tok = Tokenizer()
    opt = torch.optim.AdamW(tok.parameters(), lr=2e-3, weight_decay=0.01, fused=True)
    ckpt = work_dir and os.path.join(work_dir, "tokenizer.pt")
    step = 0
    if ckpt and os.path.isfile(ckpt):
        state = weights.load_checkpoint(ckpt)
        tok.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        rng.setstate(state["rng"])
    crop = 64
    while step < steps:
        for g in opt.param_groups:
            g["lr"] = 1e-4 + (2e-3 - 1e-4) * 0.5 * (1 + math.cos(math.pi * step / steps))
        mels, units = [], []
        for mel, t in rng.choices(train, k=32):
            s0 = rng.randrange(max(1, len(t) - crop + 1))
            t = t[s0:s0 + crop]
            mels.append(F.pad(mel[4 * s0:4 * (s0 + len(t))], (0, 0, 0, 4 * (crop - len(t)))))
            units.append(F.pad(t, (0, crop - len(t)), value=-100))
        loss = F.cross_entropy(tok(torch.stack(mels)).flatten(0, 1), torch.stack(units).flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if ckpt and (step % 200 == 0 or step == steps):
            os.makedirs(work_dir, exist_ok=True)
            weights.save_checkpoint({"model": tok.state_dict(), "opt": opt.state_dict(), "step": step,
                                     "rng": rng.getstate()}, ckpt)
        if progress:
            progress(step, steps, loss.item())
    tok.eval()
    right = total = 0
    for c in clips:
        if c.split == "test":
            u = tok.encode(read_clip(data_dir, c))
            right += int((u == tokens[c.id]).sum())
            total += len(u)
    return tok, {"steps": step, "held_out_accuracy": right / max(total, 1)}


def utterances(data_dir: str, clips: list[Clip], frontend) -> tuple[list, list]:
    """(train, test) Utterances: v2 phones of each clip's text (the project's front-end) and its tokens."""
    from specdec.gpt_train import Utterance
    tokens = load_tokens(data_dir)
    out = {"train": [], "test": []}
    for c in clips:
        phones, _ = frontend.phones(c.text, "en")
        out[c.split].append(Utterance(c.id, c.speaker, phones, tokens[c.id]))
    return out["train"], out["test"]


def load_tokens(data_dir: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return {k: v.long() for k, v in load_file(os.path.join(data_dir, "tokens.safetensors")).items()}


def token_report(tokens: dict[str, torch.Tensor]) -> str:
    """Unigram entropy, bigram conditional entropy and repeat rate (bits; a cheap proxy for predictability)."""
    uni, bi, prev, rep, n = Counter(), Counter(), Counter(), 0, 0
    for t in tokens.values():
        t = t.tolist()
        uni.update(t)
        for a, b in zip(t, t[1:]):
            bi[a, b] += 1
            prev[a] += 1
            rep += a == b
            n += 1

    def h(c):
        tot = sum(c.values())
        return -sum(v / tot * math.log2(v / tot) for v in c.values())
    return f"H1 {h(uni):.2f} bits, H(t|t-1) {h(bi) - h(prev):.2f} bits, repeats {rep / max(n, 1):.2f}"


def pair_examples(train: list, test: list, seed: int = 0) -> tuple[list, list]:
    """Draft-training sequences in the inference layout: each training sentence prompted by a random other sentence
    of its speaker; held out: each test sentence prompted as in `gpt_train.held_out_pairs`."""
    import random

    from specdec.distill import Example
    from specdec.gpt_train import held_out_pairs, pair
    rng = random.Random(seed)
    by_speaker = defaultdict(list)
    for u in train:
        by_speaker[u.speaker].append(u)
    tr = [pair(rng.choice(by_speaker[u.speaker]), u) for u in train]
    return ([Example(e.phones, e.tokens) for e in tr],
            [Example(e.phones, e.tokens) for e in held_out_pairs(test, train)])


def reference_clips(clips: list[Clip], speakers: list[str], min_s: float = 3.0, max_s: float = 6.0) -> dict[str, Clip]:
    """Per speaker, the first training clip of min_s..max_s seconds: the built-in voice's reference."""
    out = {}
    for c in clips:
        if c.split == "train" and c.speaker in speakers and c.speaker not in out and min_s <= c.seconds <= max_s:
            out[c.speaker] = c
    return out


def make_voice(data_dir: str, clip: Clip, tokens: torch.Tensor, frontend) -> Voice:
    """A built-in voice: the reference transcript's phones, the clip's tokens (the GPT prompt) and the fast
    decoder's conditioning (the clip's log-mel statistics)."""
    from specdec.models.fast_decoder import SAMPLE_RATE, reference_stats
    from specdec.models.tokenizer import UNIT_SET
    phones, _ = frontend.phones(clip.text, "en")
    cond = {"ref_mel_stats": reference_stats(read_clip(data_dir, clip), SAMPLE_RATE)}
    return Voice(clip.speaker, clip.text, "en", frontend.symbol_version, phones, tokens, None, cond,
                 {"source": clip.id, "decoder": "fast", "tokenizer": UNIT_SET})
