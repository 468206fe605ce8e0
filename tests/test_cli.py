"""The command line: every command runs, every bad input is one line on stderr with a non-zero exit and leaves
no file behind."""
import contextlib
import io
import json
import os
import subprocess
import sys

import pytest
import torch

from specdec import GPT, GPTConfig
from specdec.cli import main
from specdec.models.checkpoint import upstream_checkpoint


def run(*args):
    """`specdec ARGS` in this process (the same `main` the console script calls): (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(args))
        except SystemExit as e:  # argparse usage errors
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def run_process(*args):
    """The real console entry point in a fresh interpreter (slower: imports torch again)."""
    p = subprocess.run([sys.executable, "-m", "specdec.cli", *args], capture_output=True, text=True,
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
                       "--requests", "1", "--repeats", "1", "--adaptive", "--no-upstream", "-o", str(tmp_path))
    assert rc == 0, err
    res = json.loads((tmp_path / "bench_tiny.json").read_text())
    assert [r["name"] for r in res["rows"]] == ["AR", "layerskip:1 k=2", "layerskip:1 k=3",
                                                "layerskip:1 adaptive k≤3"]
    assert res["rows"][0]["tpot_speedup_vs_AR"] == 1.0
    assert all(0 < r["ttft_ms_median"] and 0 < r["tpot_ms_median"] for r in res["rows"])
    assert "| AR |" in (tmp_path / "bench_tiny.md").read_text()
    assert sorted(os.listdir(tmp_path / "bench_tiny")) == ["acceptance_per_position.png", "speedup_vs_k.png"]
    assert "note" not in err  # upstream checkpoints hold fp16 weights: the fast exact kernels take them


def test_bench_refuses_impossible_counts(tmp_path):
    for args in (["--requests", "0"], ["--repeats", "0"], ["--tokens", "0"], ["--warmup", "-1"], ["--requests", "9"]):
        rc, _, err = run("bench", *args, "--no-upstream", "-o", str(tmp_path))
        assert "--" in one_error_line(rc, err)
    assert not os.listdir(tmp_path)


def test_bench_sweeps_draft_temperatures_for_model_drafts_only(ckpt, tmp_path):
    rc, out, err = run("bench", "--gpt", str(ckpt), "--draft", "layerskip:1", "--draft", "ngram", "--k", "2",
                       "--draft-temperature", "1,0.5", "--tokens", "12", "--requests", "1", "--repeats", "1",
                       "--no-upstream", "-o", str(tmp_path))
    assert rc == 0, err
    res = json.loads((tmp_path / "bench_tiny.json").read_text())
    assert [r["name"] for r in res["rows"]] == ["AR", "layerskip:1 T×1 k=2", "layerskip:1 T×0.5 k=2", "ngram k=2"]
    assert res["draft_temperatures"] == {"layerskip:1 T×1": 1.0, "layerskip:1 T×0.5": 0.5, "ngram": None}


def test_a_gpt_the_fast_kernels_cannot_take_gets_a_note(tmp_path):
    """fp32 weights that are not fp16 values (a model trained here, saved in fp32) run at torch's fp32 speed: say
    so and how to convert, rather than be silently slow."""
    from specdec.models.checkpoint import save_gpt
    torch.manual_seed(0)
    path = tmp_path / "fp32.safetensors"
    save_gpt(GPT(GPTConfig(n_layer=1, d_model=32, n_head=2, phoneme_vocab_size=732)), str(path))
    rc, _, err = run("bench", "--gpt", str(path), "--draft", "ngram", "--k", "2", "--tokens", "4", "--requests", "1",
                     "--repeats", "1", "--warmup", "0", "--no-upstream", "-o", str(tmp_path))
    assert rc == 0 and "not fp16 values" in err and "specdec convert" in err, err


def test_bench_speaks_the_demo_voice_with_a_target_on_its_units(tmp_path):
    """--gpt with a target trained on the demo's units (here the bundle's own GPT, as a file): the demo's sentences
    and voice, end to end through its decoder; the bundle's drafts belong to the bundle's target only."""
    from specdec import demo
    from specdec.models.checkpoint import save_gpt
    path = tmp_path / "mine.safetensors"
    save_gpt(demo.load().gpt, str(path))
    rc, out, err = run("bench", "--gpt", str(path), "--draft", "int8", "--k", "2", "--tokens", "12", "--requests", "1",
                       "--repeats", "1", "--warmup", "0", "--no-upstream", "-o", str(tmp_path))
    assert rc == 0, err
    res = json.loads((tmp_path / "bench_mine.json").read_text())
    assert [r["name"] for r in res["rows"]] == ["AR", "int8 k=2"] and res["n_requests"] == 1
    assert [r["name"] for r in res["end_to_end"]["rows"]] == ["AR", "int8 k=2"]
    rc, _, err = run("bench", "--gpt", str(path), "--draft", "bundle", "--no-upstream", "-o", str(tmp_path))
    assert "bundle's own target" in one_error_line(rc, err)


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


def test_distill_writes_a_draft_the_engine_uses_and_resumes(ckpt, tmp_path):
    texts = tmp_path / "texts.txt"
    animals = ["cat", "dog", "bird", "fox", "cow", "pig", "hen", "owl", "ant", "bee", "elk"]
    texts.write_text("\n".join(f"The {w} sat on mat number {i}." for i, w in enumerate(animals)))
    out = tmp_path / "draft.safetensors"

    def distill(steps, *more):
        return run("distill", "--target", str(ckpt), "--texts", str(texts), "--kind", "gpt", "--layers", "1",
                   "--steps", str(steps), "--max-tokens", "20", "-o", str(out), *more)
    rc, stdout, err = distill(3)
    assert rc == 0 and out.exists() and "acceptance" in stdout, err
    assert os.path.exists(str(out) + ".work/examples.pt")  # the target's sequences, kept for resuming
    rc, stdout, err = distill(6, "--precision", "bf16")  # resumes from step 3, in bf16
    assert rc == 0 and "6 steps" in stdout, err
    from specdec.models.checkpoint import load_gpt
    target, draft = load_gpt(str(ckpt)), str(out)
    phones = torch.randint(0, 732, (12,), generator=torch.Generator().manual_seed(0))
    import specdec
    ref = specdec.generate(target, phones, None, top_k=1, max_new_tokens=30)
    got = specdec.generate(target, phones, None, top_k=1, max_new_tokens=30, draft=draft, k=3)
    assert torch.equal(ref.tokens, got.tokens)


@pytest.fixture(scope="module")
def model_set(tmp_path_factory):
    """(gpt.ckpt, v1 gpt.ckpt, sovits v2 .pth, voice folder): a tiny random GPT that ends its sentences by itself,
    an upstream-saved SoVITS, and a voice made for them."""
    from sovits_oracle import oracle_case
    from specdec.voices import Voice
    from upstream import randomize_
    d = tmp_path_factory.mktemp("models")
    paths = []
    for vocab in (732, 512):
        gpt = GPT(GPTConfig(n_layer=2, d_model=64, n_head=4, phoneme_vocab_size=vocab))
        randomize_(gpt, 3, eos_bias=3.5)
        paths.append(d / f"gpt{vocab}.ckpt")
        torch.save(upstream_checkpoint(gpt), paths[-1])
    g = torch.Generator().manual_seed(0)
    Voice("ref", "a reference.", "en", "v2", torch.randint(0, 732, (12,), generator=g),
          torch.randint(0, 1024, (40,), generator=g), None,
          {"refer_spec": torch.rand(1025, 100, generator=g)}).save(str(d / "voice"))
    return str(paths[0]), str(paths[1]), oracle_case("v2").path, str(d / "voice")


def test_synth_with_a_model_set_writes_audio_and_statistics(model_set, tmp_path):
    import soundfile as sf
    gpt, _, sovits, voice = model_set
    out = tmp_path / "out.wav"
    rc, stdout, err = run("synth", "Hello there. How are you?", "--gpt", gpt, "--sovits", sovits, "--voice", voice,
                          "--draft", "layerskip:1", "--k", "3", "--seed", "0", "--json", "-o", str(out))
    assert rc == 0, err
    r = json.loads(stdout)
    for key in ("tokens", "target_passes", "gpt_tokens_per_s", "mean_acceptance_length", "acceptance_per_position",
                "first_chunk_s", "rtf", "audio_s"):
        assert key in r
    assert r["tokens"] > 0 and r["target_passes"] < r["tokens"] + r["segments"]
    assert len(r["acceptance_per_position"]) == 3
    audio, sr = sf.read(str(out))
    assert sr == 32000 and abs(len(audio) / sr - r["audio_s"]) < 0.01
    rc, stdout, err = run("synth", "Hello there.", "--gpt", gpt, "--sovits", sovits, "--voice", voice, "--mode",
                          "quality", "-o", str(tmp_path / "q.wav"))
    assert rc == 0 and "real-time factor" in stdout, err


def test_synth_eco_mode_runs_an_int8_gpt_and_says_it_is_lossy(model_set, tmp_path):
    gpt, _, sovits, voice = model_set
    common = ("Hello there.", "--gpt", gpt, "--sovits", sovits, "--voice", voice, "--seed", "0")
    rc, stdout, err = run("synth", *common, "--mode", "eco", "--json", "-o", str(tmp_path / "e.wav"))
    assert rc == 0 and json.loads(stdout)["lossy"], err
    rc, stdout, err = run("synth", *common, "--mode", "eco", "-o", str(tmp_path / "e.wav"))
    assert rc == 0 and "LOSSY" in stdout, err
    rc, stdout, err = run("synth", *common, "--mode", "fast", "--json", "-o", str(tmp_path / "f.wav"))
    r = json.loads(stdout)
    # no bundled draft: fast mode drafts with an int8 copy of the GPT (exact) at its measured k, eco mode runs its
    # int8 GPT alone
    assert rc == 0 and not r["lossy"] and r["draft"] == "int8" and r["k"] == 6 and r["num_drafts"] > 0, err
    rc, stdout, err = run("synth", *common, "--draft", "bundle", "-o", str(tmp_path / "b.wav"))
    assert "no bundled draft" in one_error_line(rc, err) and not (tmp_path / "b.wav").exists()


@pytest.mark.parametrize("case,needle", [
    ("empty", "empty"),
    ("k0", "--k"),
    ("no_folder", "does not exist"),
    ("no_voice", "voice"),
    ("half_set", "--gpt, --sovits and --voice"),
    ("v1_gpt", "symbol-set mismatch"),
    ("japanese", "cannot be read"),
])
def test_synth_bad_inputs(model_set, tmp_path, case, needle):
    gpt, gpt_v1, sovits, voice = model_set
    out = str(tmp_path / "out.wav")
    text, opts = "Hello there.", ["--gpt", gpt, "--sovits", sovits, "--voice", voice]
    if case == "empty":
        text = "   "
    elif case == "k0":
        opts += ["--k", "0"]
    elif case == "no_folder":
        out = str(tmp_path / "missing" / "out.wav")
    elif case == "no_voice":
        opts[-1] = str(tmp_path / "nope")
    elif case == "half_set":
        opts = opts[:2]
    elif case == "v1_gpt":
        opts[1] = gpt_v1
    elif case == "japanese":
        text = "こんにちは"
    rc, _, err = run("synth", text, *opts, "-o", out)
    assert needle in one_error_line(rc, err)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def tiny_hubert(tmp_path_factory):
    """A one-layer HuBERT with chinese-hubert-base's widths (the SoVITS ssl_proj reads 768 channels)."""
    transformers = pytest.importorskip("transformers", reason="optional extra [hubert] not installed")
    from test_sovits_prompt import hubert_dir
    torch.manual_seed(0)
    config = transformers.HubertConfig.from_pretrained(hubert_dir(), num_hidden_layers=1)
    folder = str(tmp_path_factory.mktemp("hubert"))
    transformers.HubertModel(config).eval().save_pretrained(folder)
    return folder


def test_voice_create(tmp_path, tiny_hubert):
    import soundfile as sf

    from sovits_oracle import oracle_case
    from specdec.voices import Voice
    g = torch.Generator().manual_seed(0)
    for name, seconds in (("ok.wav", 4.0), ("short.wav", 2.0)):
        sf.write(str(tmp_path / name), (0.1 * torch.randn(int(seconds * 32000), generator=g)).numpy(), 32000)
    pth = oracle_case("v2").path
    rc, out, err = run("voice", "create", str(tmp_path / "ok.wav"), "--text", "Hello there, how are you",
                       "--sovits", pth, "--hubert", tiny_hubert, "-o", str(tmp_path / "voice"))
    assert rc == 0, err
    v = Voice.load(str(tmp_path / "voice"))
    # 25 Hz over the 4 s clip + the 0.6 s of silence upstream appends (at 16 kHz) before HuBERT
    assert v.symbol_version == "v2" and v.phones.numel() > 10 and 110 <= v.tokens.numel() <= 118
    assert v.text == "Hello there, how are you" and "refer_spec" in v.conditioning
    rc, _, err = run("voice", "create", str(tmp_path / "short.wav"), "--text", "Hi.", "--sovits", pth,
                     "--hubert", tiny_hubert, "-o", str(tmp_path / "short_voice"))
    assert "3-10 s" in one_error_line(rc, err) and not (tmp_path / "short_voice").exists()


@pytest.mark.parametrize("args,needle", [
    (["info", "/nope.ckpt"], "no such file"),
    (["convert", "/nope.ckpt", "-o", "OUT"], "no such file"),
    (["bench", "--shape", "v2", "--gpt", "x"], "at most one"),
    (["bench", "--gpt", "G", "--k", "0"], "1..16"),
    (["bench", "--gpt", "G", "--k", "a,b"], "integers"),
    (["frobnicate"], "invalid choice"),
    (["info"], "required"),
    (["distill", "--target", "/nope.ckpt", "--texts", "/nope.txt", "-o", "OUT"], "no such file"),
    (["distill", "--target", "/nope.ckpt", "--texts", "/nope.txt", "--layers", "0", "-o", "OUT"], "--layers"),
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
    rc, _, err = run_process("--debug", "info", "/nope.ckpt")
    assert rc != 0 and "Traceback" in err
    rc, _, err = run_process("info", "/nope.ckpt")
    assert "no such file" in one_error_line(rc, err)


def test_importing_specdec_first_shortens_the_openmp_spin_unless_set():
    import subprocess
    import sys
    code = "import os, specdec; print(os.environ['GOMP_SPINCOUNT'])"
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1000"
    env["GOMP_SPINCOUNT"] = "5"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "5"
