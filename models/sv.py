"""Speaker embedding for SoVITS v2Pro/v2ProPlus: Kaldi fbank + ERes2NetV2 (`forward3`) → 20480-d.

Upstream (`GPT_SoVITS/sv.py`, gpt-sovits.md §6): the peak-normalised 32 kHz reference is resampled to 16 kHz;
Kaldi-compatible fbank (80 mel bins, 25 ms Povey window every 10 ms, pre-emphasis 0.97, DC removal, power spectrum
over a 512-point FFT, mel bank 20 Hz-Nyquist, log, no dither, snip_edges); ERes2NetV2(baseWidth 24, scale 4,
expansion 4) from `sv/pretrained_eres2netv2w24s4ep4.ckpt`; the fused stage-3/4 map [B, 2048, 10, T'] is flattened
over channels × frequency and averaged over time. The embedding head (`seg_1`) is in the checkpoint but unused.

Clean-room re-implementation; parameter names follow the checkpoint (a plain state dict), so it loads as is.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from specdec.errors import SpecdecError

SV_CKPT_NAME = "pretrained_eres2netv2w24s4ep4.ckpt"
SV_RATE = 16000
EPS = torch.finfo(torch.float32).eps


# ---- Kaldi fbank -----------------------------------------------------------------------------------------------
def _mel(f):
    return 1127.0 * torch.log(1.0 + f / 700.0) if isinstance(f, torch.Tensor) else 1127.0 * math.log(1.0 + f / 700.0)


def kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: float, low: float = 20.0, high: float = 0.0) -> torch.Tensor:
    """[n_mels, n_fft // 2 + 1] triangles equally spaced on Kaldi's mel scale (1127 ln(1 + f/700)); the Nyquist bin
    gets no weight, as in Kaldi."""
    high = high if high > 0 else sample_rate / 2 + high
    lo_mel, hi_mel = _mel(low), _mel(high)
    step = (hi_mel - lo_mel) / (n_mels + 1)
    b = torch.arange(n_mels)[:, None]
    left, center, right = lo_mel + b * step, lo_mel + (b + 1.0) * step, lo_mel + (b + 2.0) * step
    mel = _mel(sample_rate / n_fft * torch.arange(n_fft // 2, dtype=torch.float32))[None]  # [1, n_fft/2]
    up, down = (mel - left) / (center - left), (right - mel) / (right - center)
    return F.pad(torch.clamp(torch.minimum(up, down), min=0.0), (0, 1))


def kaldi_fbank(wav: torch.Tensor, n_mels: int = 80, sample_rate: int = SV_RATE) -> torch.Tensor:
    """wav [N] → log mel energies [frames, n_mels], frames = 1 + (N - 400) // 160 at 16 kHz (Kaldi defaults,
    dither 0)."""
    size, shift = int(sample_rate * 0.025), int(sample_rate * 0.010)
    if wav.shape[-1] < size:
        raise SpecdecError(f"audio too short for fbank features ({wav.shape[-1]} samples < {size})")
    n_fft = 1 << (size - 1).bit_length()
    frames = wav.unfold(0, size, shift)  # [M, 400]
    frames = frames - frames.mean(1, keepdim=True)  # remove DC per frame
    prev = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)  # pre-emphasis; the first sample uses itself
    frames = frames - 0.97 * prev
    window = torch.hann_window(size, periodic=False, dtype=wav.dtype).pow(0.85)  # Povey window
    power = torch.fft.rfft(F.pad(frames * window, (0, n_fft - size))).abs().pow(2.0)  # [M, n_fft/2 + 1]
    energies = power @ kaldi_mel_banks(n_mels, n_fft, sample_rate).to(wav.dtype).t()
    return torch.clamp(energies, min=EPS).log()


# ---- ERes2NetV2 ----------------------------------------------------------------------------------------------------
def _relu20(x):  # upstream's "ReLU" is Hardtanh(0, 20)
    return F.hardtanh(x, 0.0, 20.0)


class AFF(nn.Module):
    """Attentional feature fusion: a = 1 + tanh(att([x, y])); x·a + y·(2 - a)."""

    def __init__(self, channels: int, r: int = 4):
        super().__init__()
        inter = channels // r
        self.local_att = nn.Sequential(nn.Conv2d(2 * channels, inter, 1), nn.BatchNorm2d(inter), nn.SiLU(),
                                       nn.Conv2d(inter, channels, 1), nn.BatchNorm2d(channels))

    def forward(self, x, y):
        a = 1.0 + torch.tanh(self.local_att(torch.cat([x, y], dim=1)))
        return x * a + y * (2.0 - a)


class Block(nn.Module):
    """Res2Net-style block: split into `scale` groups, each 3×3 conv sees its group plus the previous group's output
    (added, or AFF-fused in the deeper stages)."""

    def __init__(self, in_planes: int, planes: int, stride: int, base_width: int, scale: int, expansion: int,
                 fuse: bool):
        super().__init__()
        width = int(math.floor(planes * base_width / 64.0))
        self.width = width
        self.conv1 = nn.Conv2d(in_planes, width * scale, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1, bias=False) for _ in range(scale))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(scale))
        if fuse:
            self.fuse_models = nn.ModuleList(AFF(width) for _ in range(scale - 1))
        self.fuse = fuse
        self.conv3 = nn.Conv2d(width * scale, planes * expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * expansion)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes * expansion:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes * expansion, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes * expansion))

    def forward(self, x):  # [B, C, F, T]
        groups = _relu20(self.bn1(self.conv1(x))).split(self.width, dim=1)
        outs, sp = [], None
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            if i == 0:
                sp = groups[0]
            else:
                sp = self.fuse_models[i - 1](sp, groups[i]) if self.fuse else sp + groups[i]
            sp = _relu20(bn(conv(sp)))
            outs.append(sp)
        return _relu20(self.bn3(self.conv3(torch.cat(outs, dim=1))) + self.shortcut(x))


class ERes2NetV2(nn.Module):
    def __init__(self, base_width: int = 24, scale: int = 4, expansion: int = 4, m_channels: int = 64,
                 num_blocks: tuple = (3, 4, 6, 3), embedding_size: int = 192, feat_dim: int = 80):
        super().__init__()
        self.conv1 = nn.Conv2d(1, m_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m_channels)
        in_planes = m_channels
        for i, n in enumerate(num_blocks):
            planes, blocks = m_channels << i, []
            for j in range(n):
                blocks.append(Block(in_planes, planes, 2 if (i > 0 and j == 0) else 1, base_width, scale, expansion,
                                    fuse=i >= 2))
                in_planes = planes * expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        c3, c4 = (m_channels << 2) * expansion, (m_channels << 3) * expansion
        self.layer3_ds = nn.Conv2d(c3, c4, 3, padding=1, stride=2, bias=False)
        self.fuse34 = AFF(c4)
        self.seg_1 = nn.Linear(feat_dim // 8 * m_channels * 8 * expansion * 2, embedding_size)  # unused head

    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        """feats [B, T, 80] fbank → [B, 20480] (upstream `forward3`)."""
        x = F.relu(self.bn1(self.conv1(feats.transpose(1, 2)[:, None])))  # [B, 64, 80, T]
        x3 = self.layer3(self.layer2(self.layer1(x)))
        fused = self.fuse34(self.layer4(x3), self.layer3_ds(x3))  # [B, 2048, 10, T/8]
        return fused.flatten(1, 2).mean(-1)


def load_sv_model(path: str, dtype: torch.dtype = torch.float32) -> ERes2NetV2:
    if not os.path.isfile(path):
        raise SpecdecError(f"{path}: speaker-embedding model not found; SoVITS v2Pro/v2ProPlus need ERes2NetV2 "
                           f"weights, upstream's GPT_SoVITS/pretrained_models/sv/{SV_CKPT_NAME}")
    from specdec.models.weights import read_torch_pickle
    state = read_torch_pickle(path)  # upstream saves the bare state dict
    model = ERes2NetV2()
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    if missing or extra:
        raise SpecdecError(f"{path}: not an ERes2NetV2 w24s4ep4 checkpoint (missing {len(missing)}, e.g. "
                           f"{missing[:1]}; unexpected {len(extra)}, e.g. {extra[:1]})")
    bad = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise SpecdecError(f"{path}: {k} has shape {tuple(state[k].shape)}, expected {tuple(own[k].shape)}")
    model.load_state_dict(state)
    return model.to(dtype).eval().requires_grad_(False)


@torch.inference_mode()
def speaker_embedding(model: ERes2NetV2, wav32k: torch.Tensor) -> torch.Tensor:
    """Peak-normalised 32 kHz reference [N] → [20480] (what `voice.sv_emb` holds)."""
    from specdec.models.audio import SOVITS_RATE, resample
    wav16k = resample(wav32k.float(), SOVITS_RATE, SV_RATE)
    return model.embed(kaldi_fbank(wav16k)[None].to(next(model.parameters()).dtype))[0].float()
