"""Bad inputs give one clear line (SpecdecError naming the file and the problem), never a traceback wall."""
import json
import os

import pytest
import torch

import specdec
from specdec import GPT, GPTConfig, SpecdecError
from specdec.models.checkpoint import save_gpt, upstream_checkpoint


@pytest.fixture
def small_gpt():
    return GPT(GPTConfig(n_layer=1, d_model=32, n_head=2, phoneme_vocab_size=512)).eval()


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and len(msg) < 300, msg
    return msg


def test_missing_file():
    with pytest.raises(SpecdecError) as e:
        specdec.load_gpt("/nonexistent/model.ckpt")
    assert "no such file" in _one_line(e)


def test_empty_and_directory(tmp_path):
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(SpecdecError) as e:
        specdec.load_gpt(str(tmp_path / "empty.ckpt"))
    assert "empty" in _one_line(e)
    with pytest.raises(SpecdecError) as e:
        specdec.load_gpt(str(tmp_path))
    assert "directory" in _one_line(e)


@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
def test_truncated_file(tmp_path, small_gpt, fmt):
    path = str(tmp_path / f"m.{fmt}")
    if fmt == "ckpt":
        torch.save(upstream_checkpoint(small_gpt), path)
    else:
        save_gpt(small_gpt, path)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(SpecdecError) as e:
        specdec.load_gpt(path)
    assert path in _one_line(e) and ("corrupt" in str(e.value) or "truncated" in str(e.value))


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.ckpt"
    path.write_bytes(os.urandom(5000))
    with pytest.raises(SpecdecError) as e:
        specdec.load_gpt(str(path))
    _one_line(e)


def test_mismatched_config(tmp_path, small_gpt):
    ckpt = upstream_checkpoint(small_gpt)
    ckpt["config"]["model"]["n_layer"] = 2  # claims a layer the weights lack
    torch.save(ckpt, tmp_path / "m.ckpt")
    with pytest.raises(SpecdecError) as e:
        specdec.load_gpt(str(tmp_path / "m.ckpt"))
    assert "missing" in _one_line(e)
    ckpt = upstream_checkpoint(small_gpt)
    ckpt["config"]["model"]["phoneme_vocab_size"] = 732  # v2 vocabulary, v1-sized embedding
    torch.save(ckpt, tmp_path / "m2.ckpt")
    with pytest.raises(SpecdecError) as e:
        specdec.load_gpt(str(tmp_path / "m2.ckpt"))
    assert "shape" in _one_line(e)


def test_sovits_file_given_as_gpt(tmp_path):
    torch.save({"weight": {"enc_p.proj.weight": torch.zeros(2)}, "config": {}, "info": "x"}, tmp_path / "s.pth")
    with pytest.raises(SpecdecError) as e:
        specdec.load_gpt(str(tmp_path / "s.pth"))
    assert "SoVITS" in _one_line(e)


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    torch.save({"weight": Evil(), "config": {}}, tmp_path / "evil.ckpt")
    with pytest.raises(SpecdecError) as e:
        specdec.load_gpt(str(tmp_path / "evil.ckpt"))
    assert "refused to unpickle" in _one_line(e)


def test_safetensors_without_specdec_metadata(tmp_path):
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(SpecdecError) as e:
        specdec.load_gpt(str(tmp_path / "x.safetensors"))
    assert "not a specdec GPT file" in _one_line(e)


def test_round_trip_through_both_formats(tmp_path, small_gpt):
    torch.save(upstream_checkpoint(small_gpt, torch.float32), tmp_path / "m.ckpt")
    a = specdec.load_gpt(str(tmp_path / "m.ckpt"))
    save_gpt(a, str(tmp_path / "m.safetensors"))
    b = specdec.load_gpt(str(tmp_path / "m.safetensors"))
    for (ka, va), (kb, vb) in zip(small_gpt.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    meta = json.loads(__import__("safetensors").safe_open(str(tmp_path / "m.safetensors"), "pt").metadata()["config"])
    assert meta["phoneme_vocab_size"] == 512


def test_impossible_generation_options(small_gpt):
    phones = torch.zeros(4, dtype=torch.long)
    with pytest.raises(SpecdecError):
        specdec.generate(small_gpt, phones, top_k=0)
    with pytest.raises(SpecdecError):
        specdec.generate(small_gpt, phones, draft="layerskip:5")
    with pytest.raises(SpecdecError):
        specdec.generate(small_gpt, phones, draft="layerskip:x")
    with pytest.raises(SpecdecError):
        specdec.generate(small_gpt, torch.zeros(0, dtype=torch.long))
    with pytest.raises(SpecdecError):
        specdec.generate(small_gpt, torch.tensor([600]))  # outside the 512-phone vocabulary
