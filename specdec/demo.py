"""The bundled demo voice: a small GPT-SoVITS-style model set trained here (see models/demo/MODEL_CARD.md).

    bundle = demo.load()            # GPT, EAGLE draft (+ a small GPT draft), fast decoder, v2 front-end, voices
    voice = bundle.voice("slt")     # a built-in speaker, a voice folder, or None for the default
    voice = bundle.create_voice("me.wav", "What the clip says.")   # a new speaker from a 3-10 s reference
    bundle.generation               # the synth defaults measured best for this model (generation.json)

`specdec synth "text"` with no model options uses it, so the CLI speaks with nothing downloaded.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field

from specdec.errors import SpecdecError
from specdec.sampling import SAMPLING_OPTIONS, SamplingParams
from specdec.voices import Voice

DEFAULT_VOICE = "awb"  # the lowest held-out WER at upstream default sampling (MODEL_CARD.md)
SPEED_MODES = ("fast", "eco")  # `specdec synth --mode` presets that draft
MODE_KEYS = ("draft", "k")  # per speed mode: the draft (bundle, int8, ngram, layerskip:N, ...) and drafts per round
GENERATION_KEYS = (*SAMPLING_OPTIONS, *SPEED_MODES)  # sampling (upstream names), then each mode's drafting
MAX_K = 16  # drafts per round the CLI accepts


def demo_dir() -> str:
    """models/demo of the installed package (specdec.models maps to the repository's models/ folder)."""
    import specdec.models
    return os.path.join(os.path.dirname(specdec.models.__file__), "demo")


@dataclass
class DemoBundle:
    gpt: object  # specdec.models.gpt.GPT
    draft: object  # specdec.models.eagle.EagleDraft or None
    decoder: object  # specdec.models.fast_decoder.FastDecoder
    frontend: object  # specdec.models.text.Frontend("v2")
    voices: dict[str, Voice] = field(default_factory=dict)
    default_voice: str = DEFAULT_VOICE
    folder: str = ""
    generation: dict = field(default_factory=dict)  # this model's own synth defaults, chosen by measurement
    gpt_draft: object = None  # a small distilled GPT draft (specdec.models.gpt.GPT), benchmarked beside the EAGLE one

    def voice(self, name: str | None = None) -> Voice:
        """A built-in speaker by name, a voice folder made for this bundle, or the default speaker."""
        name = name or self.default_voice
        if name in self.voices:
            return self.voices[name]
        if os.path.isdir(name):
            return Voice.load(name)
        raise SpecdecError(f"--voice {name}: no such built-in speaker ({', '.join(sorted(self.voices))}) "
                           "or voice folder")

    def create_voice(self, ref_wav: str, text: str, name: str | None = None) -> Voice:
        """A voice from a reference clip and its transcript; the bundle's tokenizer reads the clip's units."""
        from specdec.models.tokenizer import load_tokenizer
        from specdec.voices import create_demo_voice
        tok = load_tokenizer(_need(os.path.join(self.folder, "tokenizer.safetensors")))
        return create_demo_voice(ref_wav, text, self.frontend, tok, name)


def read_generation(path: str) -> dict:
    """generation.json (like a Hugging Face generation_config): the sampling settings, and per speed mode the draft
    and draft length, that the model card measured best for this model; absent → {} (upstream's defaults apply)."""
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            settings = json.load(f)
    except (OSError, ValueError) as e:
        raise SpecdecError(f"{path}: unreadable ({e})") from None
    if not isinstance(settings, dict) or set(settings) - set(GENERATION_KEYS):
        raise SpecdecError(f"{path}: expected an object with keys among {', '.join(GENERATION_KEYS)}")
    for mode in SPEED_MODES:
        m = settings.get(mode, {})
        if not isinstance(m, dict) or set(m) - set(MODE_KEYS):
            raise SpecdecError(f"{path}: {mode} must be an object with keys among {', '.join(MODE_KEYS)}")
        k = m.get("k", 1)
        if not (isinstance(k, int) and 1 <= k <= MAX_K):
            raise SpecdecError(f"{path}: {mode}.k must lie in 1..{MAX_K} (got {k!r})")
        if not isinstance(m.get("draft", ""), str):
            raise SpecdecError(f"{path}: {mode}.draft must be a draft name (bundle, int8, ngram, layerskip:N, ...)")
    try:
        SamplingParams(**{o: settings[o] for o in SAMPLING_OPTIONS if o in settings})
    except (SpecdecError, TypeError) as e:
        raise SpecdecError(f"{path}: {e}") from None
    return settings


def _need(path: str) -> str:
    if not os.path.isfile(path):
        raise SpecdecError(f"{path}: the demo bundle is incomplete (reinstall specdec, or rebuild it with "
                           "bench/demo_voice/build.py)")
    return path


@functools.lru_cache(maxsize=4)
def load(folder: str | None = None) -> DemoBundle:
    """Load the bundle from `folder` (default: the installed models/demo). Weights are stored in fp16 and run in
    fp32, which makes the GPT's GEMMs take the exact fp16-weight path."""
    from specdec.models.checkpoint import load_gpt
    from specdec.models.eagle import load_eagle
    from specdec.models.fast_decoder import FastDecoder
    from specdec.models.text import Frontend
    folder = folder or demo_dir()
    gpt = load_gpt(_need(os.path.join(folder, "gpt.safetensors")))
    draft_path = os.path.join(folder, "draft.safetensors")
    draft = load_eagle(draft_path, gpt.cfg) if os.path.isfile(draft_path) else None
    decoder = FastDecoder.from_file(_need(os.path.join(folder, "decoder.safetensors")))
    vdir = os.path.join(folder, "voices")
    voices = {n: Voice.load(os.path.join(vdir, n)) for n in sorted(os.listdir(vdir))} if os.path.isdir(vdir) else {}
    if not voices:
        raise SpecdecError(f"{vdir}: the demo bundle has no voices")
    default = DEFAULT_VOICE if DEFAULT_VOICE in voices else next(iter(voices))
    gpt_draft_path = os.path.join(folder, "draft_gpt.safetensors")
    gpt_draft = load_gpt(gpt_draft_path) if os.path.isfile(gpt_draft_path) else None
    return DemoBundle(gpt, draft, decoder, Frontend("v2"), voices, default, folder,
                      read_generation(os.path.join(folder, "generation.json")), gpt_draft)
