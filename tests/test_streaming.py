"""Streaming decode: chunks cover every token, seams do not click, and the result stays close to one offline
decode (equal to it when every token is known before the first window)."""
import math
from types import SimpleNamespace

import pytest
import torch

from sovits_oracle import specdec_model
from specdec.models.decoder import SoVITSDecoder
from specdec.streaming import ChunkPlan, stream_decode

T = 64
MIN_SNR_DB = 20.0  # streamed vs offline with random weights (every frame attends to every token); measured ≈ 25 dB


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    tokens, phones = torch.randint(0, 1024, (T,), generator=g), torch.randint(0, 732, (30,), generator=g)
    voice = SimpleNamespace(refer_spec=torch.rand(1025, 120, generator=g))
    rounds, i = [], 0
    while i < T:  # speculative rounds accept 1..5 tokens
        n = int(torch.randint(1, 6, (1,), generator=g))
        rounds.append(tokens[i:i + n].tolist())
        i += n
    return tokens, phones, voice, rounds


def _seam_jumps(chunks):
    out = torch.cat(chunks)
    seams = torch.tensor([c.shape[0] for c in chunks]).cumsum(0)[:-1]
    return out.diff().abs()[seams - 1]


@pytest.mark.parametrize("noise_scale", [0.0, 0.5])
def test_streamed_audio_stays_close_to_the_offline_decode(setup, noise_scale):
    tokens, phones, voice, rounds = setup
    dec = SoVITSDecoder(specdec_model("v2"), noise_scale=noise_scale)
    ref = dec.decode(tokens, phones, voice)
    chunks = list(stream_decode(rounds, dec, phones, voice, ChunkPlan(first=12, chunk=16, lookahead=4, overlap=2)))
    out = torch.cat(chunks)
    assert len(chunks) >= 4 and out.shape == ref.shape
    assert chunks[0].shape[0] == (12 - 2) * dec.samples_per_token  # the first chunk leaves after 12 tokens
    snr = 10 * math.log10(ref.pow(2).mean() / (out - ref).pow(2).mean())
    assert snr >= MIN_SNR_DB
    assert _seam_jumps(chunks).max() <= ref.diff().abs().quantile(0.999)  # no step at any seam


def test_with_all_tokens_known_streaming_equals_the_offline_decode(setup):
    tokens, phones, voice, _ = setup
    dec = SoVITSDecoder(specdec_model("v2"), noise_scale=0.5)
    chunks = list(stream_decode([tokens.tolist()], dec, phones, voice, ChunkPlan(first=10, chunk=9, overlap=3)))
    assert len(chunks) > 3
    torch.testing.assert_close(torch.cat(chunks), dec.decode(tokens, phones, voice), atol=2e-5, rtol=0)


def test_a_stream_shorter_than_the_first_chunk_still_comes_out(setup):
    tokens, phones, voice, _ = setup
    dec = SoVITSDecoder(specdec_model("v2"), noise_scale=0.0)
    chunks = list(stream_decode([tokens[:3].tolist(), tokens[3:7].tolist()], dec, phones, voice))
    torch.testing.assert_close(torch.cat(chunks), dec.decode(tokens[:7], phones, voice), atol=2e-5, rtol=0)
    assert list(stream_decode([], dec, phones, voice)) == []
