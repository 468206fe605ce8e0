"""SoVITS decode path against upstream `SynthesizerTrn` (gpt-sovits-cpufast==0.1.0) with random weights saved as
upstream .pth files (v1, v2, v2Pro with its "05" header, v2ProPlus with "06")."""
from __future__ import annotations

import types

import pytest
import torch

from sovits_oracle import oracle_case, specdec_model, upstream_decode, upstream_spectrogram, upstream_style
from specdec.models.audio import linear_spectrogram
from specdec.models.decoder import Decoder, SoVITSDecoder
from specdec.models.sovits import SV_DIM
from specdec.models.sovits_checkpoint import load_sovits, save_sovits

VERSIONS = ["v1", "v2", "v2Pro", "v2ProPlus"]
TOL = 2e-5  # max abs on 32 kHz samples in [-1, 1]: 5x tighter than the 1e-4 bar (we measure ~1.5e-6)


def reference_inputs(version: str, seed: int = 1):
    """A 3.5 s reference (a few tones and noise) at 32 kHz, its spectrogram and, for Pro, a speaker embedding."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(3.5 * 32000)) / 32000
    wav = sum(0.2 * torch.sin(2 * torch.pi * f * t + p) for f, p in [(180, 0.1), (440, 1.0), (2300, 2.0)])
    wav = wav + 0.05 * torch.randn(t.shape, generator=g)
    sv = torch.randn(SV_DIM, generator=g) if "Pro" in version else None
    return wav, sv


def random_inputs(version: str, n_tokens: int = 20, n_phones: int = 20, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 1024, (n_tokens,), generator=g),
            torch.randint(0, 322 if version == "v1" else 732, (n_phones,), generator=g))


@pytest.fixture(scope="module")
def decoders():
    cache = {}

    def get(version):
        if version not in cache:
            cache[version] = SoVITSDecoder(specdec_model(version), noise_scale=0.0)
        return cache[version]
    return get


def test_reference_spectrogram_matches_upstream():
    wav, _ = reference_inputs("v2")
    ours, theirs = linear_spectrogram(wav), upstream_spectrogram(wav)
    assert ours.shape == theirs.shape == (1025, (len(wav) + 2 * 704 - 2048) // 640 + 1)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("version", VERSIONS)
def test_checkpoint_version_and_config(version, decoders):
    cfg = decoders(version).cfg
    assert cfg.version == version
    assert (cfg.gin_channels, cfg.upsample_initial_channel) == {
        "v1": (512, 512), "v2": (512, 512), "v2Pro": (1024, 512), "v2ProPlus": (1024, 768)}[version]
    assert cfg.n_symbols == (322 if version == "v1" else 732)
    with open(oracle_case(version).path, "rb") as f:  # Pro files carry upstream's version tag instead of "PK"
        assert f.read(2) == {"v2Pro": b"05", "v2ProPlus": b"06"}.get(version, b"PK")


@pytest.mark.parametrize("version", VERSIONS)
def test_style_matches_upstream(version, decoders):
    wav, sv = reference_inputs(version)
    spec = linear_spectrogram(wav)
    style = decoders(version).style(types.SimpleNamespace(refer_spec=spec, sv_emb=sv))
    ge, ge_text = upstream_style(oracle_case(version).upstream, spec, sv)
    assert style.ge.shape == ge.shape and style.ge_text.shape == ge_text.shape
    scale = ge.abs().max()
    torch.testing.assert_close(style.ge, ge, rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(style.ge_text, ge_text, rtol=0, atol=1e-5 * ge_text.abs().max())


@pytest.mark.parametrize("version", VERSIONS)
def test_waveform_matches_upstream(version, decoders):
    wav, sv = reference_inputs(version)
    spec = linear_spectrogram(wav)
    tokens, phones = random_inputs(version)
    ours = decoders(version).decode(tokens, phones, types.SimpleNamespace(refer_spec=spec, sv_emb=sv))
    theirs = upstream_decode(oracle_case(version).upstream, tokens, phones, spec, sv)
    assert ours.dtype == torch.float32 and ours.shape == theirs.shape == (20 * 1280,)
    assert theirs.std() > 0.05 and theirs.abs().max() < 0.999  # a live signal, not silence or saturated tanh
    assert (ours - theirs).abs().max() <= TOL


def test_speed_matches_upstream(decoders):
    wav, sv = reference_inputs("v2")
    spec = linear_spectrogram(wav)
    tokens, phones = random_inputs("v2", n_tokens=12)
    ours = decoders("v2").decode(tokens, phones, types.SimpleNamespace(refer_spec=spec), speed=1.3)
    theirs = upstream_decode(oracle_case("v2").upstream, tokens, phones, spec, speed=1.3)
    assert ours.shape == theirs.shape == ((int(24 / 1.3) + 1) * 640,)
    assert (ours - theirs).abs().max() <= TOL


def test_aux_references_average_like_upstream(decoders):
    case = oracle_case("v2Pro")
    specs, svs = zip(*[(linear_spectrogram(w), s) for w, s in (reference_inputs("v2Pro", k) for k in (1, 5))])
    style = decoders("v2Pro").style(types.SimpleNamespace(refer_spec=list(specs), sv_emb=list(svs)))
    with torch.no_grad():
        ge, _ = case.upstream.build_decode_condition([s[None] for s in specs], [e[None] for e in svs])
    torch.testing.assert_close(style.ge, ge, rtol=0, atol=1e-5 * ge.abs().max())


def test_decode_window_is_the_exact_slice(decoders):
    """Windows decode only a slice plus the flow/HiFi-GAN margins, yet equal the full decode, noise included."""
    base = decoders("v2")
    dec = SoVITSDecoder(base.model, noise_scale=0.6, seed=7)
    assert isinstance(dec, Decoder) and dec.samples_per_token == 1280 and dec.sample_rate == 32000
    wav, _ = reference_inputs("v2")
    voice = types.SimpleNamespace(refer_spec=linear_spectrogram(wav))
    tokens, phones = random_inputs("v2", n_tokens=20)
    full = dec.decode(tokens, phones, voice)
    noiseless = base.decode_window(tokens, phones, voice, 0, 3)
    assert (full[:len(noiseless)] - noiseless).abs().max() > 1e-3  # the noise is really there
    cuts = [0, 3, 11, 20]
    parts = [dec.decode_window(tokens, phones, voice, a, b) for a, b in zip(cuts, cuts[1:])]
    assert [len(p) for p in parts] == [1280 * (b - a) for a, b in zip(cuts, cuts[1:])]
    assert (torch.cat(parts) - full).abs().max() <= 1e-5


def test_safetensors_roundtrip(decoders, tmp_path):
    model = decoders("v2Pro").model
    path = str(tmp_path / "pro.safetensors")
    save_sovits(model, path)
    again = load_sovits(path)
    assert again.cfg == model.cfg
    mine, theirs = model.state_dict(), again.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_style_cache_follows_the_voice(decoders):
    dec = decoders("v2")
    wav, _ = reference_inputs("v2")
    spec = linear_spectrogram(wav)
    voice = types.SimpleNamespace(refer_spec=spec)
    first = dec.style(voice).ge.clone()
    assert dec.style(voice).ge is dec.style(voice).ge  # cached
    spec.mul_(0.5)  # in-place edit bumps the tensor version: recomputed
    assert not torch.equal(dec.style(voice).ge, first)
