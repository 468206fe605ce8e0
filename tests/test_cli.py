"""The command line: every command runs, every bad input is one line on stderr with a non-zero exit and leaves
no file behind."""
import json
import os
import subprocess
import sys

import pytest
import torch

from specdec import GPT, GPTConfig
from specdec.models.checkpoint import upstream_checkpoint


def run(*args, cwd=None):
    p = subprocess.run([sys.executable, "-m", "specdec.cli", *args], capture_output=True, text=True, cwd=cwd,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    return p.returncode, p.stdout, p.stderr


def one_error_line(rc, err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc != 0 and len(lines) == 1 and "error" in lines[0] and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    gpt = GPT(GPTConfig(n_layer=2, d_model=32, n_head=2, phoneme_vocab_size=732))
    path = d / "tiny.ckpt"
    torch.save(upstream_checkpoint(gpt), path)
    return path


def test_info_and_convert(ckpt, tmp_path):
    rc, out, _ = run("info", str(ckpt), "--json")
    info = json.loads(out)
    assert rc == 0 and info["n_layer"] == 2 and info["symbol_set"].startswith("v2") and info["fp16_exact"]
    rc, out, err = run("convert", str(ckpt), "-o", str(tmp_path / "t.safetensors"))
    assert rc == 0 and (tmp_path / "t.safetensors").exists()
    rc, out, _ = run("info", str(tmp_path / "t.safetensors"), "--json")
    assert rc == 0 and json.loads(out)["parameters"] == info["parameters"]


def test_bench_writes_json_markdown_and_plots(ckpt, tmp_path):
    rc, out, err = run("bench", "--gpt", str(ckpt), "--draft", "layerskip:1", "--k", "2,3", "--tokens", "12",
                       "--requests", "1", "--repeats", "1", "--no-upstream", "-o", str(tmp_path))
    assert rc == 0, err
    res = json.loads((tmp_path / "bench_tiny.json").read_text())
    assert [r["name"] for r in res["rows"]] == ["AR", "layerskip:1 k=2", "layerskip:1 k=3"]
    assert "| AR |" in (tmp_path / "bench_tiny.md").read_text()
    assert sorted(os.listdir(tmp_path / "bench_tiny")) == ["acceptance_per_position.png", "speedup_vs_k.png"]


def test_sovits_info_and_convert(tmp_path):
    """An upstream v2 .pth (random weights, upstream's own saver) → info → specdec safetensors → same weights."""
    from sovits_oracle import oracle_case

    from specdec.models.sovits_checkpoint import load_sovits
    pth = oracle_case("v2").path
    rc, out, err = run("info", pth, "--json")
    info = json.loads(out)
    assert rc == 0 and info["version"] == "v2" and info["symbol_set"].startswith("v2"), err
    dst = tmp_path / "s.safetensors"
    rc, out, err = run("convert", pth, "-o", str(dst), "--dtype", "float32")
    assert rc == 0 and "sovits" in out, err
    a, b = load_sovits(pth).state_dict(), load_sovits(str(dst)).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rc, out, _ = run("info", str(dst), "--json")
    assert rc == 0 and json.loads(out)["parameters"] == info["parameters"]


@pytest.mark.parametrize("args,needle", [
    (["info", "/nope.ckpt"], "no such file"),
    (["convert", "/nope.ckpt", "-o", "OUT"], "no such file"),
    (["bench", "--shape", "v2", "--gpt", "x"], "exactly one"),
    (["bench", "--gpt", "G", "--k", "0"], "1..16"),
    (["bench", "--gpt", "G", "--k", "a,b"], "integers"),
    (["frobnicate"], "invalid choice"),
    (["info"], "required"),
])
def test_bad_inputs_are_one_line(args, needle, tmp_path, ckpt):
    args = [str(ckpt) if a == "G" else str(tmp_path / a) if a == "OUT" else a for a in args]
    rc, _, err = run(*args)
    assert needle in one_error_line(rc, err)
    assert not (tmp_path / "OUT").exists()


def test_corrupt_checkpoint_convert_leaves_nothing(tmp_path, ckpt):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(ckpt.read_bytes()[:1000])
    rc, _, err = run("convert", str(bad), "-o", str(tmp_path / "x.safetensors"))
    assert "corrupt" in one_error_line(rc, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ckpt"]


def test_debug_shows_the_traceback():
    rc, _, err = run("--debug", "info", "/nope.ckpt")
    assert rc != 0 and "Traceback" in err
