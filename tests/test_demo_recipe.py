"""The demo voice recipe at toy size, end to end, so it cannot rot: corpus (flite) → units → tokenizer → GPT → draft
→ voices → bundle → demo.load → speculative synthesis; plus the pieces' own contracts."""
import math
import random
import shutil

import pytest
import torch

from specdec import corpus, demo, voicebuild
from specdec.distill import DistillConfig, distill
from specdec.engine import Engine, Request
from specdec.errors import SpecdecError
from specdec.gpt_train import GPTTrainConfig, held_out_pairs, train_gpt
from specdec.models.checkpoint import save_gpt
from specdec.models.fast_decoder import FastDecoderConfig, TokenToMel, save_fast_decoder
from specdec.models.gpt import GPTConfig
from specdec.models.text import Frontend
from specdec.models.tokenizer import (N_UNITS, PHONES, Tokenizer, TokenizerConfig, consistent, load_tokenizer,
                                      n_frames, phone_units, save_tokenizer)
from specdec.pipeline import TTS, synthesize
from specdec.sampling import SAMPLING_OPTIONS, SamplingParams

needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="flite (Debian package) speaks the corpus")


def test_sentences_are_distinct_reproducible_and_test_texts_unseen():
    a, b = corpus.sentences(300, seed=3), corpus.sentences(300, seed=3)
    assert a == b and len(set(a)) == 300 and all(s[0].isupper() and s[-1] in ".?" for s in a)
    clips = corpus.plan(300, 20, ["slt", "rms"], seed=3)
    train = {c.text for c in clips if c.split == "train"}
    test = [c for c in clips if c.split == "test"]
    assert len(test) == 20 and not train & {c.text for c in test}
    assert corpus.plural("knife") == "knives" and corpus.plural("cup of tea") == "cups of tea"


def test_a_corpus_grown_with_a_fixed_held_out_set_keeps_its_clips_and_splits():
    small = corpus.plan(300, 20, ["slt", "rms"], seed=3)
    grown = corpus.plan(500, 20, ["slt", "rms"], seed=3, test_at=300)
    assert [(c.id, c.text, c.split) for c in grown[:300]] == [(c.id, c.text, c.split) for c in small]
    assert all(c.split == "train" for c in grown[300:]) and sum(c.split == "test" for c in grown) == 20
    assert not {c.text for c in grown if c.split == "train"} & {c.text for c in grown if c.split == "test"}
    with pytest.raises(SpecdecError, match="held-out sentences end at 600"):
        corpus.plan(500, 20, ["slt"], test_at=600)


def test_word_list_sentences_add_vocabulary_for_training_only():
    words = corpus.common_words(500)
    assert len(words) == 500 and {"from", "the", "about"} <= set(words) and not {"sex", "x"} & set(words)
    a = corpus.word_sentences(200, seed=1, words=words)
    assert a == corpus.word_sentences(200, seed=1, words=words) and len(set(a)) == 200
    assert a[:50] == corpus.word_sentences(50, seed=1, words=words)  # prefix-stable
    assert all(4 <= len(t.split()) <= 14 and t[0].isupper() and t[-1] in ".?" for t in a)
    clips = corpus.plan(40, 10, ["slt", "rms"], seed=3, n_words=30)
    extra = [c for c in clips if "_w" in c.id]
    assert len(extra) == 30 and all(c.split == "train" for c in extra) and extra[1].speaker == "rms"
    assert [(c.id, c.split) for c in clips[:40]] == [(c.id, c.split) for c in corpus.plan(40, 10, ["slt", "rms"], 3)]


def test_phone_units_keep_every_phone_and_its_timing():
    segs = [("pau", 0.2), ("dh", 0.23), ("ax", 0.25), ("k", 0.4), ("ae", 0.61), ("t", 0.64), ("pau", 0.8)]
    u = phone_units(segs, n_frames(int(0.8 * 16000)))
    assert len(u) == 20 and int(u.max()) < N_UNITS
    phones = [PHONES[i // 2] for i in u.tolist()]
    onsets = [PHONES[i // 2] for i in u.tolist() if i % 2 == 0]
    assert onsets == [p for p, _ in segs]  # every phone, even the 20 ms ones, keeps a frame, in order
    assert phones[:5] == ["pau"] * 5 and phones[-4:] == ["pau"] * 4  # long phones keep their rounded spans
    assert all(phones[j] == phones[j - 1] for j in range(1, 20) if u[j] % 2 == 1)  # a continuation continues
    assert torch.equal(consistent(u), u)
    with pytest.raises(SpecdecError, match="not in the unit set"):
        phone_units([("xx", 0.1)], 4)
    with pytest.raises(SpecdecError, match="do not fit"):
        phone_units(segs, 5)


def test_psdur_segments_are_shifted_into_the_trimmed_clip():
    segs = corpus.parse_psdur("pau:0.184 dh:0.251 ax:0.281 pau:0.900 \n")
    assert segs == [("pau", 0.184), ("dh", 0.251), ("ax", 0.281), ("pau", 0.9)]
    shifted = corpus._shift(segs, start=0.2, duration=0.6)  # trimmed at 0.2 s, 0.6 s long
    assert [p for p, _ in shifted] == ["dh", "ax", "pau"] and shifted[-1][1] == 0.6
    assert abs(shifted[0][1] - 0.051) < 1e-9
    with pytest.raises(SpecdecError, match="unreadable phone segment"):
        corpus.parse_psdur("pau:x")


def test_consistent_onsets_and_tokenizer_roundtrip(tmp_path):
    # a phone change is always an onset; a predicted onset within a phone (a repeated phone) is kept
    assert consistent(torch.tensor([3, 3, 5, 4, 5, 5])).tolist() == [2, 3, 4, 4, 5, 5]
    tok = Tokenizer(TokenizerConfig(dim=16, layers=1))
    save_tokenizer(tok, str(tmp_path / "t.safetensors"))
    tok2 = load_tokenizer(str(tmp_path / "t.safetensors"))
    wav = torch.randn(16000, generator=torch.Generator().manual_seed(0))
    units = tok2.encode(wav)
    assert units.shape == (n_frames(16000),) and int(units.max()) < N_UNITS
    assert torch.equal(consistent(units), units)


@needs_flite
def test_tiny_recipe_end_to_end(tmp_path):
    data, bundle, work = tmp_path / "data", tmp_path / "bundle", tmp_path / "work"
    clips = corpus.build(str(data), n_sentences=16, n_test=4, speakers=["slt", "rms"])
    again = corpus.build(str(data), n_sentences=16, n_test=4, speakers=["slt", "rms"])  # resumes: nothing to do
    assert [c.seconds for c in again] == [c.seconds for c in clips] and all(c.seconds > 0.5 for c in clips)
    assert corpus.read_manifest(str(data / "manifest.jsonl")) == again

    tokens = voicebuild.tokenize_corpus(str(data), clips)
    assert all(int(t.max()) < N_UNITS and t.numel() == n_frames(round(c.seconds * 16000)) for c, t in
               zip(clips, tokens.values()))
    tok, report = voicebuild.train_tokenizer(str(data), clips, tokens, steps=3, work_dir=str(work / "tokenizer"))
    assert report["steps"] == 3 and 0 <= report["held_out_accuracy"] <= 1
    frontend = Frontend("v2")
    train, test = voicebuild.utterances(str(data), clips, frontend)
    assert len(test) == 4 and all(u.tokens.numel() > 10 for u in train)

    cfg = GPTConfig(n_layer=1, d_model=64, n_head=2, vocab_size=N_UNITS + 1, phoneme_vocab_size=732)
    gpt, st = train_gpt(cfg, train, held_out_pairs(test, train), str(work / "gpt"),
                        GPTTrainConfig(steps=40, warmup=5, lr=3e-3, batch_tokens=1500, eval_every=20))
    assert st.history[-1]["loss"] < st.history[0]["loss"] < math.log(N_UNITS + 1) + 0.5  # it learns
    bundle.mkdir()
    save_gpt(gpt, str(bundle / "gpt.safetensors"), dtype=torch.float16)

    report = distill(gpt, *voicebuild.pair_examples(train, test), str(bundle / "draft.safetensors"),
                     str(work / "draft"), DistillConfig(steps=10, warmup=2, batch_tokens=1500))
    assert report["steps"] == 10

    save_fast_decoder(TokenToMel(FastDecoderConfig(vocab_size=N_UNITS, dim=32, token_layers=1, frame_layers=1,
                                                   gl_iters=2)), str(bundle / "decoder.safetensors"))
    refs = voicebuild.reference_clips(clips, ["slt", "rms"], min_s=0.0, max_s=60.0)
    for spk, clip in refs.items():
        voicebuild.make_voice(str(data), clip, tokens[clip.id], frontend).save(str(bundle / "voices" / spk))

    b = demo.load(str(bundle))
    # no awb (the shipped default) here: the default is the first speaker
    assert set(b.voices) == {"slt", "rms"} and b.voice().name == "rms" and b.draft is not None
    tts = TTS(b.gpt, b.decoder, b.frontend, draft=b.draft, k=3)
    audio, stats = synthesize("Hello there.", tts, b.voice("rms"), params=SamplingParams(seed=0, max_new_tokens=30))
    assert audio.size == stats.gpt.num_emitted_tokens * b.decoder.samples_per_token and stats.gpt.num_drafts > 0
    # the shipped pair is exact: greedy speculative decoding reproduces the target's greedy tokens
    v = b.voice("slt")
    phones = torch.cat([v.phones, frontend.phones("The dog ran away.", "en")[0]])
    greedy = SamplingParams(top_k=1, max_new_tokens=30)
    ref = Engine(b.gpt).generate([Request(phones, v.tokens, params=greedy)])[0]
    got = Engine(b.gpt, b.draft, k=4).generate([Request(phones, v.tokens, params=greedy)])[0]
    assert torch.equal(got.tokens, ref.tokens)


def test_a_time_budget_counts_the_steps_compute_not_pauses(tmp_path, monkeypatch):
    """A job paused or crowded out on a shared machine keeps its schedule: a budget counts each step's CPU time ÷
    threads, so steps that sleep 0.1 s each still get ~the budget's worth of compute (wall time gave 5 steps)."""
    import time

    import specdec.gpt_train as gt
    from specdec.gpt_train import Utterance
    real = gt.batch_loss
    monkeypatch.setattr(gt, "batch_loss", lambda *a: time.sleep(0.1) or real(*a))
    utts = [Utterance(f"u{i}", "a", torch.arange(5), torch.arange(8) % 16) for i in range(8)]
    cfg = GPTConfig(n_layer=1, d_model=32, n_head=2, vocab_size=17, phoneme_vocab_size=732)
    _, st = train_gpt(cfg, utts, held_out_pairs(utts[6:], utts[:6]), str(tmp_path), GPTTrainConfig(
        steps=10**9, budget_s=0.5, warmup=1, batch_tokens=200, eval_every=10**6, checkpoint_every=10**6))
    assert st.step >= 10 and 0.5 <= st.seconds < 0.5 + 0.25, (st.step, st.seconds)


def test_gpt_training_learns_in_either_precision_and_resumes(tmp_path):
    """Tokens count up mod 16 from a random start (learnable from the previous token). bf16 autocasts the steps
    (its losses differ from fp32's) and nothing else: the weights stay fp32, a resumed run continues the schedule."""
    from specdec.gpt_train import Utterance
    r = random.Random(0)
    utts = []
    for i in range(48):
        ph = torch.tensor([r.randrange(700) for _ in range(r.randint(4, 9))])
        utts.append(Utterance(f"u{i}", "ab"[i % 2], ph, (torch.arange(12) + r.randrange(16)) % 16))
    cfg = GPTConfig(n_layer=2, d_model=64, n_head=2, vocab_size=17, phoneme_vocab_size=732)
    held = held_out_pairs(utts[40:], utts[:40])
    losses = {}
    for precision in ("fp32", "bf16"):
        run = dict(warmup=5, lr=3e-3, batch_tokens=600, eval_every=30, checkpoint_every=30, precision=precision)
        work = str(tmp_path / precision)
        train_gpt(cfg, utts[:40], held, work, GPTTrainConfig(steps=30, **run))
        gpt, st = train_gpt(cfg, utts[:40], held, work, GPTTrainConfig(steps=90, **run))  # resumes at step 30
        assert [h["step"] for h in st.history] == [30, 60, 90]
        # it learns, held out: from ln 17 = 2.8 nats (uniform) to well below, still improving after the resume
        assert st.history[-1]["loss"] < min(0.2 * math.log(17), st.history[0]["loss"])
        assert all(p.dtype == torch.float32 for p in gpt.parameters())
        losses[precision] = [h["train_loss"] for h in st.history]
    assert losses["fp32"] != losses["bf16"]
    with pytest.raises(ValueError, match="precision"):
        GPTTrainConfig(steps=1, precision="fp8")


def test_pair_examples_use_the_inference_layout():
    from specdec.gpt_train import Utterance
    r = random.Random(0)
    utts = [Utterance(f"u{i}", "ab"[i % 2], torch.randint(0, 700, (r.randint(3, 9),)),
                      torch.randint(0, 16, (r.randint(5, 12),))) for i in range(10)]
    tr, te = voicebuild.pair_examples(utts[:8], utts[8:])
    for e, u in zip(tr, utts[:8]):  # prompt sentence (same speaker) first, then the sentence itself
        assert torch.equal(e.phones[-u.phones.numel():], u.phones) and torch.equal(e.tokens[-u.tokens.numel():],
                                                                                     u.tokens)
        n = e.phones.numel() - u.phones.numel()
        assert any(torch.equal(e.phones[:n], p.phones) and p.speaker == u.speaker for p in utts[:8])


def test_incomplete_bundle_is_a_one_line_error(tmp_path):
    with pytest.raises(SpecdecError, match="gpt.safetensors: the demo bundle is incomplete"):
        demo.load(str(tmp_path))


def test_shipped_demo_voice_speaks(tmp_path, capsys):
    """`specdec synth` with no model options: the bundled demo voice, speculative, writes a wav of plausible length."""
    import json

    import soundfile as sf

    from specdec.cli import main
    out = tmp_path / "hello.wav"
    assert main(["synth", "Hello from specdec.", "-o", str(out), "--seed", "0", "--json", "--voice", "rms"]) == 0
    report = json.loads(capsys.readouterr().out)
    audio, sr = sf.read(str(out))
    assert sr == 16000 and 0.5 < len(audio) / sr < 4.0 and abs(audio).max() > 0.01
    assert report["voice"] == "rms" and report["num_drafts"] > 0
    assert set(demo.load().voices) == {"slt", "rms", "awb", "kal"}


def test_synth_takes_the_bundles_generation_defaults_and_explicit_options_win(tmp_path, capsys):
    import json

    from specdec.cli import main
    gen = demo.load().generation
    out = str(tmp_path / "a.wav")
    assert main(["synth", "Good morning.", "-o", out, "--seed", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    want = SamplingParams(**{name: v for name, v in gen.items() if name in SAMPLING_OPTIONS})
    assert r["sampling"] == {"top_k": want.top_k, "top_p": want.top_p, "temperature": want.temperature,
                             "repetition_penalty": want.repetition_penalty, "seed": 1}
    fast = gen.get("fast", {})
    assert r["k"] == fast.get("k", 4) and r["draft"] == fast.get("draft", "EagleDraft")
    own = demo.load().draft.draft_temperature  # the bundle's draft file records its measured temperature
    assert r["draft_temperature"] == (own if fast.get("draft", "bundle").startswith("bundle") else 1.0)
    eco = gen.get("eco", {})
    assert main(["synth", "Good morning.", "-o", out, "--json", "--mode", "eco"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["lossy"] and r["k"] == eco.get("k", 4) and r["draft"] == eco.get("draft", "EagleDraft")
    assert r["draft_temperature"] == (own if eco.get("draft", "bundle").startswith("bundle") else 1.0)
    assert main(["synth", "Good morning.", "-o", out, "--json", "--mode", "eco", "--draft-temperature", "0.5"]) == 0
    assert json.loads(capsys.readouterr().out)["draft_temperature"] == 0.5
    assert main(["synth", "Good morning.", "-o", out, "--draft-temperature", "0"]) == 2
    assert "--draft-temperature must be positive" in capsys.readouterr().err
    assert main(["synth", "Good morning.", "-o", out, "--json", "--mode", "quality"]) == 0
    assert json.loads(capsys.readouterr().out)["draft"] == "none"  # quality mode does not speculate
    assert main(["synth", "Good morning.", "-o", out, "--json", "--top-k", "7", "--temperature", "0.9",
                 "--repetition-penalty", "1.1", "--top-p", "0.8", "--k", "2"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["k"] == 2 and r["sampling"] == {"top_k": 7, "top_p": 0.8, "temperature": 0.9,
                                             "repetition_penalty": 1.1, "seed": None}
    assert main(["synth", "Good morning.", "-o", out, "--temperature", "-1"]) == 2
    assert "temperature must be >= 0" in capsys.readouterr().err


def test_generation_file_is_optional_and_checked(tmp_path):
    path = tmp_path / "generation.json"
    assert demo.read_generation(str(path)) == {}
    path.write_text('{"top_k": 1, "fast": {"draft": "int8", "k": 3}}')
    assert demo.read_generation(str(path)) == {"top_k": 1, "fast": {"draft": "int8", "k": 3}}
    for text, error in [('{"top_k": 1, "beams": 4}', "keys among top_k"),
                        ('{"eco": {"k": 0}}', "eco.k must lie in 1..16"),
                        ('{"fast": {"draft": 3}}', "fast.draft must be a draft name"),
                        ('{"top_p": 1.5}', "generation.json: top_p must be in"), ("{", "generation.json: unreadable")]:
        path.write_text(text)
        with pytest.raises(SpecdecError, match=error):
            demo.read_generation(str(path))


@needs_flite
def test_demo_voice_from_a_new_reference_clip(tmp_path, capsys):
    """`specdec voice create` without --sovits: the bundle's tokenizer reads the clip's phonetic units (checked against
    the synthesiser's own segmentation), and the new voice speaks."""
    import subprocess

    import soundfile as sf

    from specdec.cli import main
    from specdec.voices import Voice
    text = "The old sailor carried a heavy basket of apples across the narrow bridge."
    ref = tmp_path / "ref.wav"
    run = subprocess.run(["flite", "-voice", "awb", "-psdur", "-t", text, "-o", str(ref)], check=True,
                         capture_output=True, text=True)
    assert main(["voice", "create", str(ref), "--text", text, "-o", str(tmp_path / "v"), "--name", "me"]) == 0
    voice = Voice.load(str(tmp_path / "v"))
    truth = phone_units(corpus.parse_psdur(run.stdout), n_frames(sf.info(str(ref)).frames))
    assert voice.name == "me" and voice.tokens.shape == truth.shape
    assert (voice.tokens == truth).float().mean() > 0.85  # 0.94 when written
    out = tmp_path / "out.wav"
    assert main(["synth", "Hello there.", "--voice", str(tmp_path / "v"), "-o", str(out), "--seed", "0"]) == 0
    assert sf.info(str(out)).duration > 0.3
    sf.write(str(tmp_path / "short.wav"), sf.read(str(ref))[0][:16000], 16000)
    assert main(["voice", "create", str(tmp_path / "short.wav"), "--text", "The old", "-o", str(tmp_path / "w")]) == 2
    assert "it must be 3-10 s" in capsys.readouterr().err and not (tmp_path / "w").exists()
