"""The demo voice's semantic tokens: phonetic units at 25 Hz, and the network that reads them from audio.

GPT-SoVITS tokenizes speech with CN-HuBERT + a learned codebook; no HuBERT weights exist offline. The demo corpus is
synthetic, and its synthesiser says which phone sounds when (flite `-psdur`, kept beside every clip), so the units are
the phones themselves on a 25 Hz grid: unit 2·i is the first frame of phone i, 2·i + 1 a frame that continues it
(`phone_units`). They carry what is said and how long, not who says it: the speaker comes from the voice's reference
at decode time. (k-means over log-mel, the first demo voice's units, carried timbre and pitch instead: its decoder lost
21 WER points on the corpus's own tokens, and GPT-generated tokens were unintelligible — MODEL_CARD.md.)

Audio with no segmentation — a user's reference clip — goes through `Tokenizer`, a small convolutional frame
classifier trained here on the corpus's units (`specdec.voicebuild.train_tokenizer`):

    wav 16 kHz → log-mel [4T, 80] (100 Hz, the decoder's) → standardised per clip and per bin
               → conv → stride 4 (25 Hz) → ConvBlocks → unit logits [T, 84] → argmax, onsets made consistent
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from specdec.errors import SpecdecError
from specdec.models import weights
from specdec.models.fast_decoder import FRAMES_PER_TOKEN, HOP, N_MELS, SAMPLE_RATE, ConvBlock, token_mel

FORMAT_TAG = "specdec-tokenizer"


# ---- phonetic units from a phone segmentation ---------------------------------------------------------------------
# flite's US phone set (cmulex / radio phones): every voice of the demo corpus speaks with it.
PHONES = ("pau", "aa", "ae", "ah", "ao", "aw", "ax", "axr", "ay", "b", "ch", "d", "dh", "eh", "er", "ey", "f", "g",
          "hh", "ih", "iy", "jh", "k", "l", "m", "n", "ng", "ow", "oy", "p", "r", "s", "sh", "t", "th", "uh", "uw",
          "v", "w", "y", "z", "zh")
N_UNITS = 2 * len(PHONES)  # unit 2·i: the first frame of phone i; 2·i + 1: a frame that continues it
UNIT_SET = "flite-phone-units-25hz"  # a voice's provenance tag: its prompt tokens are these units
SAMPLES_PER_TOKEN = FRAMES_PER_TOKEN * HOP  # 640 at 16 kHz: the decoder's token
TOKEN_RATE = SAMPLE_RATE // SAMPLES_PER_TOKEN  # 25 Hz


def n_frames(n_samples: int) -> int:
    """Tokens for a clip of n_samples at 16 kHz: one per started 40 ms."""
    return max(1, math.ceil(n_samples / SAMPLES_PER_TOKEN))


def phone_units(segs: list[tuple[str, float]], n: int) -> torch.Tensor:
    """A phone segmentation [(phone, end s)] → n tokens at 25 Hz (long [n]).

    Token j covers the clip's 40 ms from j/25 s; its phone is the one sounding at the frame's centre, except that
    every phone keeps at least one frame (a 25 Hz grid would otherwise drop the many phones shorter than 40 ms,
    and with them the words): each boundary is its rounded end frame, pushed right to give the previous phone a
    frame and left to leave one for every later phone."""
    if len(segs) > n:
        raise SpecdecError(f"{len(segs)} phones do not fit in {n} frames of 40 ms")
    index = {p: i for i, p in enumerate(PHONES)}
    bounds = []
    for i, (p, end) in enumerate(segs):
        if p not in index:
            raise SpecdecError(f"phone {p!r} is not in the unit set (flite's US phones)")
        b = max(round(end * TOKEN_RATE), (bounds[-1] if bounds else 0) + 1)
        bounds.append(min(b, n - (len(segs) - 1 - i)))
    bounds[-1] = n
    out = torch.empty(n, dtype=torch.long)
    start = 0
    for (p, _), b in zip(segs, bounds):
        out[start:b] = 2 * index[p] + 1
        out[start] = 2 * index[p]
        start = b
    return out


# ---- the tokenizer network ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenizerConfig:
    dim: int = 192
    layers: int = 4  # ConvBlocks at 25 Hz
    kernel: int = 5

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TokenizerConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class Tokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig = TokenizerConfig()):
        super().__init__()
        self.cfg = cfg
        C = cfg.dim
        self.conv = nn.Conv1d(N_MELS, C, cfg.kernel, padding=cfg.kernel // 2)
        self.down = nn.Conv1d(C, C, FRAMES_PER_TOKEN, stride=FRAMES_PER_TOKEN)  # 100 Hz → 25 Hz
        self.blocks = nn.ModuleList(ConvBlock(C, cfg.kernel) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(C)
        self.out = nn.Linear(C, N_UNITS)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """standardised log-mel [B, 4T, 80] → unit logits [B, T, N_UNITS]."""
        x = self.down(F.gelu(self.conv(mel.transpose(1, 2)))).transpose(1, 2)  # [B, T, C]
        for b in self.blocks:
            x = b(x)
        return self.out(self.norm(x))

    @torch.inference_mode()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """wav float [N] at 16 kHz → units long [n_frames(N)]."""
        units = self(clip_mel(wav)[None])[0].argmax(-1)
        return consistent(units)


def clip_mel(wav: torch.Tensor) -> torch.Tensor:
    """wav [N] at 16 kHz → log-mel [4·n_frames(N), 80] standardised per bin over the clip (level and timbre
    removed), edge-padded to whole tokens."""
    mel = token_mel(wav, n_frames(wav.shape[-1]))
    return (mel - mel.mean(0)) / mel.std(0).clamp_min(1e-3)


def consistent(units: torch.Tensor) -> torch.Tensor:
    """Make onsets agree with the phones: a frame whose phone differs from the previous frame's is an onset, and the
    first frame always is. units long [T] → [T]."""
    phone = units // 2
    onset = torch.ones_like(units, dtype=torch.bool)
    onset[1:] = (phone[1:] != phone[:-1]) | (units[1:] % 2 == 0)
    return 2 * phone + (~onset).long()


def save_tokenizer(tok: Tokenizer, path: str) -> None:
    """fp16 weights (the network is small and reads standardised features)."""
    weights.write(path, tok.state_dict(), FORMAT_TAG, tok.cfg.to_dict(), dtype=torch.float16)


def load_tokenizer(path: str) -> Tokenizer:
    state, config, _ = weights.read(path, FORMAT_TAG, "tokenizer")
    tok = Tokenizer(TokenizerConfig.from_dict(config))
    weights.load_state(path, tok, state, torch.float32, "tokenizer")
    return tok.eval()
