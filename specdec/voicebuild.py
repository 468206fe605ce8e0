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

from specdec.corpus import Clip
from specdec.models.tokenizer import Tokenizer, TokenizerConfig, fit, save_tokenizer
from specdec.voices import Voice


def read_clip(data_dir: str, clip: Clip) -> torch.Tensor:
    wav, _ = sf.read(os.path.join(data_dir, clip.wav), dtype="float32")
    return torch.from_numpy(wav)


def tokenize_corpus(data_dir: str, clips: list[Clip], n_tokens: int, progress=None, max_frames: int = 200_000):
    """Fit the tokenizer on the training clips (per-speaker stats included) and tokenize every clip.
    Writes tokenizer.safetensors and tokens.safetensors ({clip id: int16 [T]}) in data_dir."""
    from safetensors.torch import save_file
    tok = Tokenizer(TokenizerConfig(n_tokens=n_tokens))
    feats = {}
    for i, c in enumerate(clips):
        feats[c.id] = tok.features(read_clip(data_dir, c))
        if progress:
            progress(i + 1, len(clips))
    by_speaker = defaultdict(list)
    for c in clips:
        if c.split == "train":
            by_speaker[c.speaker].append(feats[c.id])
    stats = fit(tok, dict(by_speaker), max_frames=max_frames)
    tokens = {c.id: tok.quantize(feats[c.id], stats[c.speaker]) for c in clips}
    save_tokenizer(tok, os.path.join(data_dir, "tokenizer.safetensors"), stats)
    path = os.path.join(data_dir, "tokens.safetensors")
    save_file({k: v.to(torch.int16) for k, v in tokens.items()}, path + ".tmp", metadata={"n_tokens": str(n_tokens)})
    os.replace(path + ".tmp", path)
    return tok, stats, tokens


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
    phones, _ = frontend.phones(clip.text, "en")
    cond = {"ref_mel_stats": reference_stats(read_clip(data_dir, clip), SAMPLE_RATE)}
    return Voice(clip.speaker, clip.text, "en", frontend.symbol_version, phones, tokens, None, cond,
                 {"source": clip.id, "decoder": "fast", "tokenizer": "kmeans-logmel-25hz"})
