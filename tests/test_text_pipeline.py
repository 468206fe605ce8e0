"""The real text front-end driving the pipeline: mixed English/Mandarin text, split, read, synthesised."""
import torch

from sovits_oracle import specdec_model
from specdec import GPT, GPTConfig, SamplingParams
from specdec.models.decoder import SoVITSDecoder
from specdec.models.text import Frontend
from specdec.pipeline import TTS, synthesize
from specdec.voices import Voice
from upstream import randomize_


def test_frontend_in_synthesize():
    gpt = GPT(GPTConfig(n_layer=2, d_model=64, n_head=4, phoneme_vocab_size=732))
    randomize_(gpt, 3, eos_bias=3.5)
    frontend = Frontend("v2")
    tts = TTS(gpt.eval(), SoVITSDecoder(specdec_model("v2"), noise_scale=0.0), frontend)
    g = torch.Generator().manual_seed(0)
    phones, bert = frontend.phones("A short reference.", "en")
    voice = Voice("test", "A short reference.", "en", "v2", phones, torch.randint(0, 1024, (40,), generator=g), bert,
                  {"refer_spec": torch.rand(1025, 100, generator=g)})
    text = "Hello there, how are you today? 我很好，谢谢你。Thanks!"
    audio, stats = synthesize(text, tts, voice, language="auto", text_split="cut5",
                              params=SamplingParams(max_new_tokens=12, seed=1))
    assert stats.segments == len(frontend.split(text, "cut5")) >= 2
    assert audio.size > 0
