"""The demo voice recipe at toy size, end to end, so it cannot rot: corpus (flite) → tokenizer → GPT → EAGLE draft
→ voices → bundle → demo.load → speculative synthesis; plus the pieces' own contracts."""
import math
import random
import shutil

import pytest
import torch

from specdec import corpus, demo, voicebuild
from specdec.distill import DistillConfig, distill
from specdec.engine import Engine, Request
from specdec.gpt_train import GPTTrainConfig, held_out_pairs, train_gpt
from specdec.models.checkpoint import save_gpt
from specdec.models.fast_decoder import FastDecoderConfig, TokenToMel, save_fast_decoder
from specdec.models.gpt import GPTConfig
from specdec.models.text import Frontend
from specdec.models.tokenizer import SpeakerStats, Tokenizer, TokenizerConfig, kmeans, load_tokenizer, save_tokenizer
from specdec.pipeline import TTS, synthesize
from specdec.sampling import SamplingParams

needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="flite (Debian package) speaks the corpus")


def test_sentences_are_distinct_reproducible_and_test_texts_unseen():
    a, b = corpus.sentences(300, seed=3), corpus.sentences(300, seed=3)
    assert a == b and len(set(a)) == 300 and all(s[0].isupper() and s[-1] in ".?" for s in a)
    clips = corpus.plan(300, 20, ["slt", "rms"], seed=3)
    train = {c.text for c in clips if c.split == "train"}
    test = [c for c in clips if c.split == "test"]
    assert len(test) == 20 and not train & {c.text for c in test}
    assert corpus.plural("knife") == "knives" and corpus.plural("cup of tea") == "cups of tea"


def test_kmeans_recovers_separated_clusters_and_tokenizer_roundtrips(tmp_path):
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 6, generator=g) * 10
    x = centres.repeat_interleave(50, 0) + torch.randn(200, 6, generator=g) * 0.1
    c = kmeans(x, 4, iters=10)
    assert torch.cdist(centres, c).min(1).values.max() < 0.5  # every true centre found
    tok = Tokenizer(TokenizerConfig(n_tokens=4, n_mels=3, stack=2))
    tok.centroids.copy_(c)
    stats = SpeakerStats(torch.zeros(6), torch.ones(6))
    assert torch.equal(tok.quantize(x, stats), torch.cdist(x, c).argmin(-1))
    save_tokenizer(tok, str(tmp_path / "t.safetensors"), {"a": stats})
    tok2, st2 = load_tokenizer(str(tmp_path / "t.safetensors"))
    assert torch.equal(tok2.centroids, tok.centroids) and torch.equal(st2["a"].std, stats.std)
    wav = torch.randn(16000, generator=g)
    assert tok2.features(wav).shape == (math.ceil(16000 / 640), 6)


@needs_flite
def test_tiny_recipe_end_to_end(tmp_path):
    data, bundle, work = tmp_path / "data", tmp_path / "bundle", tmp_path / "work"
    clips = corpus.build(str(data), n_sentences=16, n_test=4, speakers=["slt", "rms"])
    again = corpus.build(str(data), n_sentences=16, n_test=4, speakers=["slt", "rms"])  # resumes: nothing to do
    assert [c.seconds for c in again] == [c.seconds for c in clips] and all(c.seconds > 0.5 for c in clips)
    assert corpus.read_manifest(str(data / "manifest.jsonl")) == again

    _, stats, tokens = voicebuild.tokenize_corpus(str(data), clips, n_tokens=16, max_frames=5000)
    assert set(stats) == {"slt", "rms"} and all(int(t.max()) < 16 for t in tokens.values())
    frontend = Frontend("v2")
    train, test = voicebuild.utterances(str(data), clips, frontend)
    assert len(test) == 4 and all(u.tokens.numel() > 10 for u in train)

    cfg = GPTConfig(n_layer=1, d_model=64, n_head=2, vocab_size=17, phoneme_vocab_size=732)
    gpt, st = train_gpt(cfg, train, held_out_pairs(test, train), str(work / "gpt"),
                        GPTTrainConfig(steps=40, warmup=5, lr=3e-3, batch_tokens=1500, eval_every=20))
    assert st.history[-1]["loss"] < st.history[0]["loss"] < math.log(17) + 0.5  # it learns
    bundle.mkdir()
    save_gpt(gpt, str(bundle / "gpt.safetensors"), dtype=torch.float16)

    report = distill(gpt, *voicebuild.pair_examples(train, test), str(bundle / "draft.safetensors"),
                     str(work / "draft"), DistillConfig(steps=10, warmup=2, batch_tokens=1500))
    assert report["steps"] == 10

    save_fast_decoder(TokenToMel(FastDecoderConfig(vocab_size=16, dim=32, token_layers=1, frame_layers=1,
                                                   gl_iters=2)), str(bundle / "decoder.safetensors"))
    refs = voicebuild.reference_clips(clips, ["slt", "rms"], min_s=0.0, max_s=60.0)
    for spk, clip in refs.items():
        voicebuild.make_voice(str(data), clip, tokens[clip.id], frontend).save(str(bundle / "voices" / spk))

    b = demo.load(str(bundle))
    assert set(b.voices) == {"slt", "rms"} and b.voice().name == "slt" and b.draft is not None
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
    from specdec.errors import SpecdecError
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
    assert report["voice"] == "rms" and report["num_drafts"] > 0 and report["k"] == 4
    assert set(demo.load().voices) == {"slt", "rms", "awb", "kal"}
