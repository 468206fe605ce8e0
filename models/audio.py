"""Reference-audio front end for SoVITS: wav reading, resampling, the linear reference spectrogram.

Upstream (gpt-sovits.md §4 step 1, §6): load the reference, average channels, resample to 32 kHz with
`torchaudio.transforms.Resample()` defaults, divide by min(2, peak) if the peak exceeds 1, then
`spectrogram_torch`: reflect-pad (n_fft - hop)/2 = 704 samples per side, STFT n_fft 2048 / hop 640 / Hann 2048,
center=False, magnitude sqrt(re² + im² + 1e-8) — linear, no mel, no log. [1025, T] at 50 Hz.

`resample` is a Hann-windowed sinc polyphase filter with torchaudio's default design (zero-crossings
`lowpass_filter_width` = 6, cutoff `rolloff` = 0.99 × the lower Nyquist, rates reduced by their gcd, output length
ceil(N·new/orig)), written here in torch so torchaudio is not a dependency. Being the same formula, it matches
torchaudio's default up to float rounding of the kernel. librosa's default (soxr, used by upstream's 16 kHz HuBERT
load) is a different filter; the two agree in the pass band and differ near the band edge.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from specdec.errors import SpecdecError

SOVITS_RATE = 32000
SSL_RATE = 16000  # HuBERT and ERes2NetV2 input rate
N_FFT, HOP, WIN = 2048, 640, 2048
REF_MIN_S, REF_MAX_S = 3.0, 10.0  # upstream rejects references outside 3-10 s


def load_wav(path: str) -> tuple[torch.Tensor, int]:
    """Any file libsndfile reads (wav, flac, ogg, ...) → mono float32 [N] in [-1, 1] for PCM, and its rate."""
    import soundfile as sf
    if not os.path.isfile(path):
        raise SpecdecError(f"{path}: no such audio file")
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)  # [N, channels]
    except (RuntimeError, sf.LibsndfileError) as e:
        raise SpecdecError(f"{path}: unreadable audio ({str(e).splitlines()[0][:120]})") from None
    if data.shape[0] == 0:
        raise SpecdecError(f"{path}: audio file has no samples")
    return torch.from_numpy(np.ascontiguousarray(data.mean(axis=1))), int(sr)


def check_reference_duration(n_samples: int, sample_rate: int, path: str = "reference") -> None:
    seconds = n_samples / sample_rate
    if not REF_MIN_S <= seconds <= REF_MAX_S:
        raise SpecdecError(f"{path}: reference clip is {seconds:.2f} s; it must be {REF_MIN_S:g}-{REF_MAX_S:g} s "
                           "(as upstream GPT-SoVITS requires)")


def _sinc_kernel(orig: int, new: int, width_zc: int, rolloff: float, dtype) -> tuple[torch.Tensor, int]:
    """[new, 2·width + orig] polyphase filter bank: row j produces output phase j of every block of `orig` inputs."""
    cutoff = min(orig, new) * rolloff  # in cycles per block of `orig` input samples (×2 = Nyquist units)
    width = math.ceil(width_zc * orig / cutoff)  # taps on each side, in input samples
    taps = torch.arange(-width, width + orig, dtype=torch.float64) / orig  # input times, in blocks
    t = (taps[None, :] - torch.arange(new, dtype=torch.float64)[:, None] / new) * cutoff  # [new, taps]
    t = t.clamp(-width_zc, width_zc)
    window = torch.cos(t * math.pi / width_zc / 2) ** 2  # Hann over ±width_zc zero-crossings
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
    return (sinc * window * (cutoff / orig)).to(dtype), width


def resample(wav: torch.Tensor, orig_sr: int, new_sr: int, width_zc: int = 6, rolloff: float = 0.99) -> torch.Tensor:
    """wav [..., N] at orig_sr → [..., ceil(N·new/orig)] at new_sr (band-limited, Hann-windowed sinc)."""
    if orig_sr == new_sr:
        return wav
    g = math.gcd(int(orig_sr), int(new_sr))
    orig, new = orig_sr // g, new_sr // g
    kernel, width = _sinc_kernel(orig, new, width_zc, rolloff, wav.dtype)
    shape, n = wav.shape[:-1], wav.shape[-1]
    x = F.pad(wav.reshape(-1, 1, n), (width, width + orig))  # zeros outside the clip
    y = F.conv1d(x, kernel[:, None, :], stride=orig)  # [B, new, blocks]
    y = y.transpose(1, 2).reshape(x.shape[0], -1)  # interleave the phases
    return y[:, :math.ceil(new * n / orig)].reshape(*shape, -1)


def linear_spectrogram(wav: torch.Tensor) -> torch.Tensor:
    """wav [N] at 32 kHz → |STFT| [1025, T] exactly as upstream `spectrogram_torch` (center=False, reflect pad)."""
    pad = (N_FFT - HOP) // 2
    if wav.shape[-1] <= pad:
        raise SpecdecError(f"reference audio too short for a spectrogram ({wav.shape[-1]} samples)")
    x = F.pad(wav[None, None], (pad, pad), mode="reflect")[0]  # [1, N + 2·pad]
    spec = torch.stft(x, N_FFT, hop_length=HOP, win_length=WIN, window=torch.hann_window(WIN, dtype=wav.dtype),
                      center=False, normalized=False, onesided=True, return_complex=True)
    return torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + 1e-8)[0]  # [1025, T]


def peak_normalize(wav: torch.Tensor) -> torch.Tensor:
    """Upstream's guard against float files with peaks above full scale: divide by min(2, peak) if peak > 1."""
    peak = wav.abs().max()
    return wav / min(2.0, float(peak)) if peak > 1 else wav


@dataclass
class Reference:
    """A reference clip prepared for SoVITS: the 32 kHz audio and its spectrogram (the `refer_spec` of a voice)."""
    wav32k: torch.Tensor  # [N32] peak-normalised; resampled to 16 kHz it feeds the ERes2NetV2 speaker embedding
    refer_spec: torch.Tensor  # [1025, T]


def load_reference(path: str) -> Reference:
    wav, sr = load_wav(path)
    check_reference_duration(wav.shape[0], sr, path)
    wav32k = peak_normalize(resample(wav, sr, SOVITS_RATE))
    return Reference(wav32k, linear_spectrogram(wav32k))
