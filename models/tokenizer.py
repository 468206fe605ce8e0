"""The demo voice's semantic-ish tokenizer: 25 Hz k-means units over speaker-normalised log-mel frames.

GPT-SoVITS tokenizes speech with CN-HuBERT + a learned codebook. No HuBERT weights exist offline, so the demo voice
uses units that are cheap to train here and keep the same rate (25 Hz):

    wav 16 kHz → log-mel (80 bins, n_fft 1024, hop 320: 50 Hz) → 2 frames stacked [T, 160]
               → standardised with the *speaker's* mean/std (`SpeakerStats`) → nearest of K centroids → token

Standardising per speaker removes most of the speaker (timbre, pitch range) from the units, so one unit means
roughly the same sound for every voice: token sequences depend more on the text, which lowers the GPT's entropy
and raises draft acceptance. The speaker comes back at decode time: `features(tokens, stats)` de-normalises the
centroids with the voice's stats (a voice carries them as conditioning).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from specdec.errors import SpecdecError
from specdec.models import weights

FORMAT_TAG = "specdec-tokenizer"


@dataclass(frozen=True)
class TokenizerConfig:
    sample_rate: int = 16000
    n_fft: int = 1024
    hop: int = 320  # 50 Hz frames
    n_mels: int = 80
    stack: int = 2  # frames per token: 25 Hz
    n_tokens: int = 256

    @property
    def dim(self) -> int:
        return self.stack * self.n_mels

    @property
    def samples_per_token(self) -> int:
        return self.stack * self.hop

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TokenizerConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class SpeakerStats:
    mean: torch.Tensor  # [dim]
    std: torch.Tensor  # [dim]

    @classmethod
    def of(cls, feats: list[torch.Tensor]) -> "SpeakerStats":
        x = torch.cat(feats)  # [N, dim]
        return cls(x.mean(0), x.std(0).clamp_min(1e-3))


def mel_filterbank(sr: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None) -> torch.Tensor:
    """[n_mels, n_fft/2+1] triangular filters, equally spaced on the HTK mel scale, peak 1."""
    def mel(f):
        return 2595.0 * math.log10(1.0 + f / 700.0)
    f_max = f_max or sr / 2
    m = torch.linspace(mel(f_min), mel(f_max), n_mels + 2, dtype=torch.float64)
    hz = 700.0 * (10 ** (m / 2595.0) - 1.0)  # [n_mels + 2] band edges
    bins = torch.linspace(0, sr / 2, n_fft // 2 + 1, dtype=torch.float64)
    lo, mid, hi = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (bins[None] - lo) / (mid - lo)
    down = (hi - bins[None]) / (hi - mid)
    return torch.clamp(torch.minimum(up, down), min=0).float()


class Tokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig = TokenizerConfig()):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("centroids", torch.zeros(cfg.n_tokens, cfg.dim))  # in normalised units
        self.register_buffer("mel_basis", mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels), persistent=False)
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)

    def log_mel(self, wav: torch.Tensor) -> torch.Tensor:
        """wav [N] at cfg.sample_rate → natural-log mel [frames, n_mels], frames = ceil(N / hop) (centred STFT)."""
        c = self.cfg
        n = math.ceil(wav.shape[-1] / c.hop) * c.hop
        wav = F.pad(wav.float(), (0, n - wav.shape[-1]))
        spec = torch.stft(wav, c.n_fft, c.hop, window=self.window, center=True, return_complex=True).abs()
        mel = self.mel_basis @ spec[:, :n // c.hop]  # [n_mels, frames]
        return torch.log(mel.clamp_min(1e-5)).t()

    def features(self, wav: torch.Tensor) -> torch.Tensor:
        """wav [N] → stacked log-mel [T, dim], T = ceil(N / samples_per_token) (the last frame zero-padded)."""
        m = self.log_mel(wav)
        s = self.cfg.stack
        pad = -m.shape[0] % s
        if pad:
            m = torch.cat([m, m[-1:].expand(pad, -1)])
        return m.reshape(-1, self.cfg.dim)

    def quantize(self, feats: torch.Tensor, stats: SpeakerStats) -> torch.Tensor:
        """stacked log-mel [T, dim] → tokens [T] long (nearest centroid after speaker normalisation)."""
        z = (feats - stats.mean) / stats.std
        return torch.cdist(z, self.centroids).argmin(-1)

    def encode(self, wav: torch.Tensor, stats: SpeakerStats) -> torch.Tensor:
        return self.quantize(self.features(wav), stats)

    def dequantize(self, tokens: torch.Tensor, stats: SpeakerStats) -> torch.Tensor:
        """tokens [T] → the centroids as log-mel in the speaker's range, [T · stack, n_mels] at 50 Hz."""
        x = self.centroids[tokens] * stats.std + stats.mean  # [T, dim]
        return x.reshape(-1, self.cfg.n_mels)


def kmeans_pp(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centre drawn ∝ squared distance to the nearest."""
    c = x[torch.randint(x.shape[0], (1,), generator=g)]
    d2 = (x - c).pow(2).sum(-1)
    for _ in range(k - 1):
        nxt = x[torch.multinomial(d2.clamp_min(1e-12), 1, generator=g)]
        c = torch.cat([c, nxt])
        d2 = torch.minimum(d2, (x - nxt).pow(2).sum(-1))
    return c


def kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0, chunk: int = 65536,
           seed_points: int = 20000) -> torch.Tensor:
    """Lloyd's k-means, k-means++ seeded on a subsample of `seed_points`; x [N, D] → centroids [k, D].
    Empty clusters are re-seeded with the points worst served by their centroid."""
    g = torch.Generator().manual_seed(seed)
    c = kmeans_pp(x[torch.randperm(x.shape[0], generator=g)[:seed_points]], k, g)
    for _ in range(iters):
        assign = torch.cat([torch.cdist(x[i:i + chunk], c).argmin(-1) for i in range(0, x.shape[0], chunk)])
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).float()
        empty = counts == 0
        c = torch.where(empty[:, None], c, sums / counts.clamp_min(1)[:, None])
        if empty.any():
            err = (x - c[assign]).pow(2).sum(-1)
            c[empty] = x[err.topk(int(empty.sum())).indices]
    return c


def fit(tok: Tokenizer, feats_by_speaker: dict[str, list[torch.Tensor]], max_frames: int = 200_000,
        iters: int = 20, seed: int = 0) -> dict[str, SpeakerStats]:
    """Fit the centroids on speaker-normalised frames (a subsample of at most max_frames); returns each speaker's
    stats, which a voice of that speaker must carry."""
    stats = {s: SpeakerStats.of(f) for s, f in feats_by_speaker.items()}
    z = torch.cat([(torch.cat(f) - stats[s].mean) / stats[s].std for s, f in feats_by_speaker.items()])
    g = torch.Generator().manual_seed(seed)
    z = z[torch.randperm(z.shape[0], generator=g)[:max_frames]]
    tok.centroids.copy_(kmeans(z, tok.cfg.n_tokens, iters, seed))
    return stats


def save_tokenizer(tok: Tokenizer, path: str, stats: dict[str, SpeakerStats] | None = None) -> None:
    """centroids + (optionally) the training speakers' stats, fp32 (they are small)."""
    state = {"centroids": tok.centroids}
    for name, s in (stats or {}).items():
        state[f"speakers.{name}.mean"], state[f"speakers.{name}.std"] = s.mean, s.std
    weights.write(path, state, FORMAT_TAG, tok.cfg.to_dict())


def load_tokenizer(path: str) -> tuple[Tokenizer, dict[str, SpeakerStats]]:
    state, config, _ = weights.read(path, FORMAT_TAG, "tokenizer")
    tok = Tokenizer(TokenizerConfig.from_dict(config))
    if "centroids" not in state or state["centroids"].shape != tok.centroids.shape:
        raise SpecdecError(f"{path}: centroids missing or not [{tok.cfg.n_tokens}, {tok.cfg.dim}] as its config says")
    tok.centroids.copy_(state["centroids"])
    names = sorted({k.split(".")[1] for k in state if k.startswith("speakers.")})
    stats = {n: SpeakerStats(state[f"speakers.{n}.mean"].float(), state[f"speakers.{n}.std"].float()) for n in names}
    return tok.eval(), stats
