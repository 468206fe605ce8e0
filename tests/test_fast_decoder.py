import math
from types import SimpleNamespace

import pytest
import torch

from specdec.errors import SpecdecError
from specdec.models.decoder import Decoder
from specdec.models.fast_decoder import (FRAMES_PER_TOKEN, HOP, N_FFT, FastDecoder, FastDecoderConfig, TokenToMel,
                                         load_fast_decoder, log_mel, reference_stats, save_fast_decoder)
from specdec.streaming import ChunkPlan, stream_decode

PHONES = torch.tensor([1, 2, 3])


def _voice(seed: int = 0) -> SimpleNamespace:
    # a reference "clip": harmonics of a gliding pitch plus a little noise, 1 s at 16 kHz
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(16000) / 16000
    f0 = 110 + 40 * seed + 30 * t
    wav = sum(torch.sin(2 * math.pi * k * torch.cumsum(f0, 0) / 16000) / k for k in range(1, 6))
    wav = 0.2 * wav + 0.01 * torch.randn(16000, generator=g)
    return SimpleNamespace(ref_mel_stats=reference_stats(wav, 16000))


@pytest.fixture(scope="module")
def decoder() -> FastDecoder:
    torch.manual_seed(0)
    return FastDecoder(TokenToMel(FastDecoderConfig(vocab_size=64, dim=32, token_layers=3, frame_layers=1,
                                                    phone_vocab=16, phone_layers=1, gl_iters=16)))


def _tokens(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 64, (n,), generator=torch.Generator().manual_seed(seed))


def _magnitude(wav: torch.Tensor) -> torch.Tensor:
    return torch.stft(wav, N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True).abs()


def test_decode_shape_and_protocol(decoder):
    assert isinstance(decoder, Decoder)
    wav = decoder.decode(_tokens(30), PHONES, _voice())
    assert wav.dtype == torch.float32 and wav.shape == (30 * decoder.samples_per_token,)
    assert decoder.samples_per_token == decoder.sample_rate // 25 and torch.isfinite(wav).all()
    assert wav.abs().max() > 0


def test_mel_of_a_window_is_exactly_the_slice_of_the_whole(decoder):
    tokens, voice = _tokens(70), _voice()
    full = decoder.mel(tokens, PHONES, voice, 0, len(tokens))
    assert full.shape == (70 * FRAMES_PER_TOKEN, 80)
    for start, end in [(0, 12), (12, 37), (33, 70), (69, 70)]:
        part = decoder.mel(tokens, PHONES, voice, start, end)
        torch.testing.assert_close(part, full[start * FRAMES_PER_TOKEN:end * FRAMES_PER_TOKEN], atol=1e-5, rtol=1e-5)


def test_streamed_audio_matches_one_shot_spectrum(decoder):
    """Chunks differ from the one-shot decode only in Griffin-Lim's phase near chunk edges: the magnitude
    spectrogram of the streamed audio stays within 5% (relative L1; 1e-4 measured on this case) of the one-shot one,
    while a different voice on the same tokens is much further away."""
    tokens, voice = _tokens(80), _voice()
    one_shot = decoder.decode(tokens, PHONES, voice)
    rounds = [tokens[i:i + 5].tolist() for i in range(0, 80, 5)]
    streamed = torch.cat(list(stream_decode(rounds, decoder, PHONES, voice, ChunkPlan(first=12, chunk=25))))
    assert streamed.shape == one_shot.shape
    ref = _magnitude(one_shot)

    def rel(w):
        return ((_magnitude(w) - ref).abs().sum() / ref.abs().sum()).item()
    other_voice = decoder.decode(tokens, PHONES, _voice(seed=3))
    assert rel(streamed) < 0.05
    assert rel(other_voice) > 2 * rel(streamed)


def test_phones_condition_the_mel(decoder):
    tokens, voice = _tokens(20), _voice()
    a = decoder.mel(tokens, PHONES, voice, 0, 20)
    assert not torch.allclose(a, decoder.mel(tokens, torch.tensor([4, 5, 6, 7]), voice, 0, 20))
    torch.testing.assert_close(a, decoder.mel(tokens, PHONES.clone(), voice, 0, 20), atol=0, rtol=0)


def test_decode_window_is_deterministic(decoder):
    tokens, voice = _tokens(40), _voice()
    torch.testing.assert_close(decoder.decode_window(tokens, PHONES, voice, 10, 30),
                               decoder.decode_window(tokens, PHONES, voice, 10, 30), atol=0, rtol=0)


def test_log_mel_frames_follow_the_hop():
    wav = torch.randn(16000)
    assert log_mel(wav).shape == (16000 // HOP + 1, 80)


def test_bad_inputs_raise_one_line_errors(decoder):
    with pytest.raises(SpecdecError, match="ref_mel_stats"):
        decoder.decode(_tokens(10), PHONES, SimpleNamespace())
    with pytest.raises(SpecdecError, match="codebook"):
        decoder.decode(torch.tensor([1, 64]), PHONES, _voice())
    with pytest.raises(SpecdecError, match="symbol table"):
        decoder.decode(_tokens(10), torch.tensor([1, 16]), _voice())
    with pytest.raises(SpecdecError, match="window"):
        decoder.decode_window(_tokens(10), PHONES, _voice(), 5, 11)


def test_weights_round_trip_fp16(decoder, tmp_path):
    path = str(tmp_path / "decoder.safetensors")
    save_fast_decoder(decoder.net, path)
    loaded = load_fast_decoder(path)
    assert loaded.cfg == decoder.cfg
    tokens, voice = _tokens(20), _voice()
    torch.testing.assert_close(FastDecoder(loaded).mel(tokens, PHONES, voice, 0, 20),
                               decoder.mel(tokens, PHONES, voice, 0, 20), atol=0.05, rtol=0.01)
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(SpecdecError, match="junk"):
        load_fast_decoder(str(tmp_path / "junk.safetensors"))
