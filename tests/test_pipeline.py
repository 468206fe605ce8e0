"""Text → GPT → decoder, offline and streamed, with a stand-in front-end (the real ones have their own tests)."""
import numpy as np
import pytest
import torch

from sovits_oracle import specdec_model
from specdec import GPT, GPTConfig, SamplingParams, SpecdecError
from specdec.models.decoder import SoVITSDecoder
from specdec.pipeline import TTS, stream, synthesize, write_wav
from specdec.streaming import ChunkPlan
from specdec.voices import Voice
from upstream import randomize_


class LetterFrontend:
    """One phone per letter; sentences split on '.'."""
    symbol_version = "v2"

    def split(self, text, method):
        return [s.strip() + "." for s in text.split(".") if s.strip()]

    def phones(self, text, language):
        ids = [100 + (ord(c) % 200) for c in text.lower() if c.isalpha()]
        if not ids:
            raise SpecdecError("nothing pronounceable")
        return torch.tensor(ids), None


@pytest.fixture(scope="module")
def tts():
    gpt = GPT(GPTConfig(n_layer=2, d_model=64, n_head=4, phoneme_vocab_size=732))
    randomize_(gpt, 3, eos_bias=3.5)
    return TTS(gpt.eval(), SoVITSDecoder(specdec_model("v2"), noise_scale=0.0), LetterFrontend(),
               draft="layerskip:1", k=3)


@pytest.fixture(scope="module")
def voice():
    g = torch.Generator().manual_seed(0)
    return Voice("test", "a reference", "en", "v2", torch.randint(0, 732, (12,), generator=g),
                 torch.randint(0, 1024, (40,), generator=g), None, {"refer_spec": torch.rand(1025, 100, generator=g)})


def test_synthesize_segments_and_statistics(tts, voice):
    params = SamplingParams(max_new_tokens=40, seed=1)
    audio, stats = synthesize("Hello there. How are you.", tts, voice, params=params)
    sr, spt = tts.decoder.sample_rate, tts.decoder.samples_per_token
    assert stats.segments == 2 and audio.dtype == np.float32
    assert audio.shape[0] == stats.gpt.num_emitted_tokens * spt + int(0.3 * sr)  # tokens + one 0.3 s pause
    d = stats.to_dict()
    for key in ("tokens", "target_passes", "gpt_tokens_per_s", "mean_acceptance_length", "acceptance_per_position",
                "first_chunk_s", "rtf", "audio_s"):
        assert key in d
    assert 0 < d["first_chunk_s"] <= d["wall_s"] and d["audio_s"] == pytest.approx(audio.shape[0] / sr)


def test_streaming_starts_early_and_matches_in_length(tts, voice):
    params = SamplingParams(max_new_tokens=40, seed=1)
    offline, _ = synthesize("Hello there. How are you.", tts, voice, params=params)
    run = stream("Hello there. How are you.", tts, voice, params=params,
                 plan=ChunkPlan(first=8, chunk=10, lookahead=2, overlap=2))
    chunks = list(run)
    assert len(chunks) > 4 and sum(c.shape[0] for c in chunks) == offline.shape[0]
    assert chunks[0].shape[0] == 6 * tts.decoder.samples_per_token  # first chunk after 8 tokens, overlap held


def test_bad_text_and_mismatched_voice(tts, voice):
    with pytest.raises(SpecdecError):
        synthesize("   ", tts, voice)
    with pytest.raises(SpecdecError):
        synthesize("123.", tts, voice)
    v1 = Voice("old", "x", "en", "v1", voice.phones, voice.tokens, None, voice.conditioning)
    with pytest.raises(SpecdecError) as e:
        synthesize("Hello.", tts, v1)
    assert "symbol set" in str(e.value)


def test_voice_round_trip(tmp_path, voice):
    voice.save(str(tmp_path / "v"))
    back = Voice.load(str(tmp_path / "v"))
    assert back.name == voice.name and torch.equal(back.tokens, voice.tokens)
    assert torch.equal(back.refer_spec, voice.refer_spec)
    with pytest.raises(SpecdecError):
        Voice.load(str(tmp_path / "missing"))


def test_wav_written_whole_or_not_at_all(tmp_path):
    import soundfile as sf
    path = str(tmp_path / "a.wav")
    write_wav(path, np.zeros(320, np.float32) + 0.5, 32000)
    data, sr = sf.read(path)
    assert sr == 32000 and data.shape == (320,)
    with pytest.raises(Exception):
        write_wav(str(tmp_path / "no" / "b.wav"), np.zeros(10, np.float32), 32000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]


def test_end_to_end_bench_reports_every_stage(tts, voice):
    """The harness's end-to-end section: AR and a speculative config, interleaved, per-stage medians."""
    from specdec import bench
    ar = TTS(tts.gpt, tts.decoder, tts.frontend)
    res = bench.end_to_end({"AR": ar, "layerskip:1 k=3": tts}, voice, texts=("Hello there.", "Good day."),
                           repeats=1, warmup=0)
    rows = {r["name"]: r for r in res["rows"]}
    assert set(rows) == {"AR", "layerskip:1 k=3"}
    for r in rows.values():
        assert 0 < r["first_chunk_s"] and r["rtf"] > 0 and r["audio_s"] > 0 and r["gpt_tokens_per_s"] > 0
        assert r["gpt_s"] > 0 and r["decode_s"] > 0 and r["frontend_s"] >= 0
    assert rows["AR"]["mean_acceptance_length"] is None
    assert 1.0 <= rows["layerskip:1 k=3"]["mean_acceptance_length"] <= 4.0
    assert "| layerskip:1 k=3 |" in bench.markdown_e2e(res)


def test_an_int8_gpt_is_labelled_lossy(tts, voice):
    import dataclasses

    from specdec.models.int8 import quantize_gpt
    params = SamplingParams(max_new_tokens=20, seed=1)
    eco = dataclasses.replace(tts, gpt=quantize_gpt(tts.gpt))  # what `specdec synth --mode eco` runs
    assert synthesize("Hello.", eco, voice, params=params)[1].to_dict()["lossy"]
    assert not synthesize("Hello.", tts, voice, params=params)[1].to_dict()["lossy"]


def test_warm_up_speaks_its_sentence_through_every_stage(tts, voice):
    """warm_up says a fixed sentence of the voice's language (numbers and an unknown word, for the front-end's
    lazily loaded parts) through the front-end, the GPT and draft, and the decoder."""
    from specdec.pipeline import WARM_UP_TEXT
    seen = []

    class Recording(LetterFrontend):
        def phones(self, text, language):
            seen.append((text, language))
            return super().phones(text, language)

    TTS(tts.gpt, tts.decoder, Recording(), draft=tts.draft, k=tts.k).warm_up(voice)
    assert seen == [(WARM_UP_TEXT["en"], "en")]
