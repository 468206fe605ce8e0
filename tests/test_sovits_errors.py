"""Bad inputs to the SoVITS path end in one-line SpecdecErrors that name the file and the problem."""
from __future__ import annotations

import types

import numpy as np
import pytest
import soundfile as sf
import torch

from sovits_oracle import oracle_case, specdec_model
from specdec.errors import SpecdecError
from specdec.models.audio import load_reference
from specdec.models.decoder import SoVITSDecoder
from specdec.models.sovits import SV_DIM, check_symbol_set
from specdec.models.sovits_checkpoint import load_sovits


def raises(fn, *fragments):
    with pytest.raises(SpecdecError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, msg
    return msg


def write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.fixture(scope="module")
def v2_bytes():
    with open(oracle_case("v2").path, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def v2_decoder():
    return SoVITSDecoder(specdec_model("v2"), noise_scale=0.0)


def saved(tmp_path, name, obj, tag: bytes | None = None) -> str:
    path = tmp_path / name
    torch.save(obj, path)
    if tag is not None:
        path.write_bytes(tag + path.read_bytes()[2:])
    return str(path)


# ---- checkpoints ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tag,name", [(b"02", "v3"), (b"03", "v3 LoRA"), (b"04", "v4 LoRA")])
def test_v3_v4_tags_refused(tmp_path, v2_bytes, tag, name):
    raises(lambda: load_sovits(write(tmp_path / "x.pth", tag + v2_bytes[2:])), "x.pth", name, "not supported")


def test_v3_v4_weights_refused(tmp_path):
    t = torch.zeros(2, dtype=torch.float16)
    path = saved(tmp_path, "s2Gv3.pth", {"weight": {"cfm.estimator.proj.weight": t, "enc_p.ssl_proj.weight": t,
                                                    "bridge.0.weight": t}, "config": {"model": {}}, "info": "x"})
    raises(lambda: load_sovits(path), "s2Gv3.pth", "v3/v4", "not supported")


def test_gpt_checkpoint_refused(tmp_path):
    path = saved(tmp_path, "gpt.ckpt", {"weight": {"model.ar_predict_layer.weight": torch.zeros(2)},
                                        "config": {"model": {}}, "info": "GPT-e1"})
    raises(lambda: load_sovits(path), "gpt.ckpt", "GPT checkpoint")


def test_header_tag_must_agree_with_weights(tmp_path):
    with open(oracle_case("v2Pro").path, "rb") as f:
        data = f.read()
    raises(lambda: load_sovits(write(tmp_path / "pro.pth", b"06" + data[2:])), "pro.pth", "v2ProPlus", "v2Pro")


def test_unknown_tag_truncated_and_missing_files(tmp_path, v2_bytes):
    raises(lambda: load_sovits(write(tmp_path / "t.pth", b"09" + v2_bytes[2:])), "t.pth", "not a SoVITS checkpoint")
    raises(lambda: load_sovits(write(tmp_path / "cut.pth", v2_bytes[: len(v2_bytes) // 2])), "cut.pth", "corrupt")
    raises(lambda: load_sovits(str(tmp_path / "none.pth")), "none.pth", "no such file")
    raises(lambda: load_sovits(write(tmp_path / "e.pth", b"")), "e.pth", "empty")


def test_missing_weights_named(tmp_path, v2_bytes):
    ckpt = torch.load(oracle_case("v2").path, weights_only=False)
    del ckpt["weight"]["flow.flows.2.post.weight"]
    path = saved(tmp_path, "m.pth", ckpt)
    raises(lambda: load_sovits(path), "m.pth", "missing 1 weights", "flow.flows.2.post.weight")


# ---- decode inputs -------------------------------------------------------------------------------------------
def test_symbol_set_mismatch(v2_decoder):
    check_symbol_set(v2_decoder.cfg, 732)
    raises(lambda: check_symbol_set(v2_decoder.cfg, 512), "symbol-set mismatch", "v1", "v2")
    v1 = SoVITSDecoder(specdec_model("v1"), noise_scale=0.0)
    raises(lambda: check_symbol_set(v1.cfg, 732), "symbol-set mismatch")
    voice = types.SimpleNamespace(refer_spec=torch.rand(1025, 150))
    raises(lambda: v1.decode(torch.tensor([1, 2, 3]), torch.tensor([5, 400]), voice), "phone id 400", "v1", "322")


def test_bad_tokens_and_voice(v2_decoder):
    voice = types.SimpleNamespace(refer_spec=torch.rand(1025, 150))
    phones = torch.tensor([5, 6, 7])
    raises(lambda: v2_decoder.decode(torch.tensor([3, 1024]), phones, voice), "token 1024", "EOS")
    raises(lambda: v2_decoder.decode(torch.tensor([], dtype=torch.long), phones, voice), "non-empty")
    raises(lambda: v2_decoder.decode(torch.tensor([3, 4]), phones, types.SimpleNamespace(refer_spec=torch.rand(80, 9))),
           "refer_spec", "[1025, T]")
    raises(lambda: v2_decoder.decode_window(torch.tensor([3, 4]), phones, voice, 1, 5), "window [1, 5)")


def test_pro_voice_needs_speaker_embedding():
    dec = SoVITSDecoder(specdec_model("v2Pro"), noise_scale=0.0)
    spec = torch.rand(1025, 150)
    tokens, phones = torch.tensor([3, 4]), torch.tensor([5, 6])
    raises(lambda: dec.decode(tokens, phones, types.SimpleNamespace(refer_spec=spec)),
           "v2Pro", "speaker embedding", "pretrained_eres2netv2w24s4ep4.ckpt")
    raises(lambda: dec.decode(tokens, phones, types.SimpleNamespace(refer_spec=spec, sv_emb=torch.zeros(SV_DIM // 2))),
           "sv_emb")


# ---- reference audio -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("seconds,ok", [(2.5, False), (3.2, True), (9.9, True), (10.5, False)])
def test_reference_length_limits(tmp_path, seconds, ok):
    path = str(tmp_path / "ref.wav")
    rng = np.random.default_rng(0)
    sf.write(path, 0.1 * rng.standard_normal((int(seconds * 44100), 2)), 44100, subtype="PCM_16")  # stereo 44.1k
    if ok:
        ref = load_reference(path)
        assert ref.refer_spec.shape[0] == 1025 and abs(len(ref.wav32k) - seconds * 32000) <= 1
    else:
        raises(lambda: load_reference(path), "ref.wav", f"{seconds:.2f} s", "3-10 s")


def test_unreadable_reference(tmp_path):
    raises(lambda: load_reference(write(tmp_path / "notes.wav", b"not audio at all")), "notes.wav", "unreadable")
    raises(lambda: load_reference(str(tmp_path / "gone.wav")), "gone.wav", "no such")
