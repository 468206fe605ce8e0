"""The torch resampler (torchaudio's default windowed-sinc design) against analytic tones and scipy."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import resample_poly

from specdec.models.audio import linear_spectrogram, resample

RATES = [(44100, 32000), (48000, 32000), (32000, 16000), (22050, 32000), (16000, 32000)]


def tone(freq: float, rate: int, n: int) -> torch.Tensor:
    return torch.sin(2 * math.pi * freq * torch.arange(n, dtype=torch.float64) / rate + 0.3)


@pytest.mark.parametrize("sr0,sr1", RATES)
def test_pass_band_tones_are_kept(sr0, sr1):
    """Up to 70% of the lower Nyquist a tone comes out as the same tone sampled at the new rate (the Hann-6 filter
    rolls off above that, as torchaudio's default does)."""
    lower = min(sr0, sr1)
    for frac, tol in [(0.02, 1e-3), (0.2, 1e-3), (0.35, 1e-2)]:
        y = resample(tone(frac * lower, sr0, sr0).float(), sr0, sr1)
        assert len(y) == sr1  # ceil(N · new / orig)
        err = (y.double() - tone(frac * lower, sr1, len(y)))[64:-64].abs().max()  # edges see the zero padding
        assert err < tol, (frac, float(err))


@pytest.mark.parametrize("sr0,sr1", [r for r in RATES if r[0] > r[1]])
def test_alias_band_is_attenuated(sr0, sr1):
    y = resample(tone(0.6 * sr1, sr0, sr0).float(), sr0, sr1)  # above the new Nyquist (0.5 · sr1)
    assert y[64:-64].pow(2).mean().sqrt() < 0.05  # input rms is 0.707


@pytest.mark.parametrize("sr0,sr1", RATES)
def test_agrees_with_scipy_in_the_pass_band(sr0, sr1):
    rng = np.random.default_rng(0)
    n = sr0 // 2
    freqs = rng.uniform(50, 0.3 * min(sr0, sr1), 12)
    t = np.arange(n) / sr0
    x = sum(np.sin(2 * np.pi * f * t + p) for f, p in zip(freqs, rng.uniform(0, 6, 12))) / 12
    g = math.gcd(sr0, sr1)
    ref = resample_poly(x, sr1 // g, sr0 // g)
    ours = resample(torch.from_numpy(x).float(), sr0, sr1).double().numpy()
    m = min(len(ref), len(ours))
    assert abs(len(ours) - len(ref)) <= 1
    assert np.abs(ours[64:m - 64] - ref[64:m - 64]).max() < 5e-3


def test_batch_shape_and_identity():
    x = torch.randn(2, 3, 4410)
    y = resample(x, 44100, 16000)
    assert y.shape == (2, 3, math.ceil(4410 * 16000 / 44100))
    torch.testing.assert_close(y[1, 2], resample(x[1, 2], 44100, 16000))
    assert resample(x, 16000, 16000) is x


def test_spectrogram_of_a_tone_peaks_at_its_bin():
    wav = tone(1000.0, 32000, 32000).float()  # 1 kHz → bin 1000 / (32000 / 2048) = 64
    spec = linear_spectrogram(wav)
    assert spec.shape == (1025, 50)
    assert (spec[:, 1:-1].argmax(0) == 64).all()  # edge frames straddle the reflect padding
