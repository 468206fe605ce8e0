"""Voices: what a reference clip and its transcript contribute, computed once and saved (safetensors + JSON).

A voice holds the GPT's prompt (the transcript's phones and BERT features, the clip's semantic tokens) and the
decoder's conditioning (SoVITS: the linear reference spectrogram and, for v2Pro/ProPlus, the ERes2NetV2 speaker
embedding; other decoders: whatever tensors they read). Decoders read conditioning as attributes
(`voice.refer_spec`), so one Voice type serves every decoder.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch

from specdec.errors import SpecdecError

FORMAT_TAG = "specdec-voice"


@dataclass
class Voice:
    name: str
    text: str  # the reference transcript
    language: str
    symbol_version: str  # "v1" | "v2": the phone ids' symbol table
    phones: torch.Tensor  # [n] long: the transcript's phone ids
    tokens: torch.Tensor  # [m] long: the clip's semantic tokens (the GPT prompt)
    bert: torch.Tensor | None = None  # [1024, n] or None (zeros, as upstream for non-Chinese text)
    conditioning: dict[str, torch.Tensor] = field(default_factory=dict)  # decoder inputs, e.g. refer_spec, sv_emb
    meta: dict = field(default_factory=dict)  # provenance (source clip, decoder, tokenizer)

    def __getattr__(self, name: str):
        cond = self.__dict__.get("conditioning", {})
        if name in cond:
            return cond[name]
        raise AttributeError(name)

    def save(self, folder: str) -> None:
        """voice.safetensors (tensors) + voice.json (everything else), written atomically."""
        from safetensors.torch import save_file
        os.makedirs(folder, exist_ok=True)
        tensors = {"phones": self.phones, "tokens": self.tokens,
                   **({"bert": self.bert} if self.bert is not None else {}),
                   **{f"cond.{k}": v for k, v in self.conditioning.items()}}
        info = {"format": FORMAT_TAG, "name": self.name, "text": self.text, "language": self.language,
                "symbol_version": self.symbol_version, "meta": self.meta}
        for name, write in (("voice.safetensors", lambda p: save_file(
                {k: v.contiguous() for k, v in tensors.items()}, p)),
                            ("voice.json", lambda p: _write_text(p, json.dumps(info, indent=2, ensure_ascii=False)))):
            path = os.path.join(folder, name)
            write(path + ".tmp")
            os.replace(path + ".tmp", path)

    @classmethod
    def load(cls, folder: str) -> "Voice":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        jpath, tpath = os.path.join(folder, "voice.json"), os.path.join(folder, "voice.safetensors")
        if not os.path.isdir(folder):
            raise SpecdecError(f"{folder}: no such voice folder")
        if not (os.path.isfile(jpath) and os.path.isfile(tpath)):
            raise SpecdecError(f"{folder}: not a voice (expected voice.json and voice.safetensors)")
        try:
            with open(jpath, encoding="utf-8") as f:
                info = json.load(f)
            tensors = load_file(tpath)
        except (ValueError, OSError, SafetensorError) as e:
            raise SpecdecError(f"{folder}: corrupt voice ({str(e).splitlines()[0][:120]})") from None
        if info.get("format") != FORMAT_TAG or "phones" not in tensors or "tokens" not in tensors:
            raise SpecdecError(f"{folder}: not a specdec voice")
        cond = {k.removeprefix("cond."): v for k, v in tensors.items() if k.startswith("cond.")}
        return cls(info["name"], info["text"], info["language"], info["symbol_version"], tensors["phones"].long(),
                   tensors["tokens"].long(), tensors.get("bert"), cond, info.get("meta", {}))


def _with_final_stop(text: str, language: str) -> str:
    """Upstream ends a reference transcript that lacks a final stop with "." (English) or "。" before reading it."""
    from specdec.models.text.split import SPLITS
    return text if text[-1] in SPLITS else text + ("." if language == "en" else "。")


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def create_sovits_voice(ref_wav: str, text: str, language: str, frontend, sovits, hubert_dir: str,
                        sv_ckpt: str | None = None, name: str | None = None) -> Voice:
    """A voice for a GPT-SoVITS model set: prompt tokens from HuBERT + the SoVITS codebook, the reference
    spectrogram, the transcript's phones (and BERT), and for v2Pro/ProPlus the ERes2NetV2 speaker embedding."""
    from specdec.models.audio import load_reference
    from specdec.models.hubert import load_hubert, prompt_tokens_from_file
    if not text.strip():
        raise SpecdecError("the reference transcript (--text) is empty")
    ref = load_reference(ref_wav)  # checks 3-10 s
    cond = {"refer_spec": ref.refer_spec}
    if sovits.cfg.is_pro:
        from specdec.models.sv import load_sv_model, speaker_embedding
        if sv_ckpt is None:
            raise SpecdecError(f"SoVITS {sovits.cfg.version} needs a speaker-embedding model: pass --sv "
                               "pretrained_eres2netv2w24s4ep4.ckpt (upstream's pretrained_models/sv/)")
        cond["sv_emb"] = speaker_embedding(load_sv_model(sv_ckpt), ref.wav32k)
    tokens = prompt_tokens_from_file(sovits, load_hubert(hubert_dir), ref_wav)
    phones, bert = frontend.phones(_with_final_stop(text.strip(), language), language)
    return Voice(name or os.path.splitext(os.path.basename(ref_wav))[0], text, language, frontend.symbol_version,
                 phones, tokens, bert, cond, {"source": os.path.basename(ref_wav), "decoder": "sovits",
                                              "sovits_version": sovits.cfg.version})


def create_demo_voice(ref_wav: str, text: str, frontend, tokenizer, name: str | None = None) -> Voice:
    """A voice for the bundled demo model set (English): prompt tokens from the bundle's tokenizer (audio → phonetic
    units), the fast decoder's conditioning (the reference's log-mel statistics) and the transcript's phones."""
    from specdec.models.audio import check_reference_duration, load_wav, peak_normalize, resample
    from specdec.models.fast_decoder import SAMPLE_RATE, reference_stats
    from specdec.models.tokenizer import UNIT_SET
    if not text.strip():
        raise SpecdecError("the reference transcript (--text) is empty")
    wav, sr = load_wav(ref_wav)
    check_reference_duration(wav.shape[0], sr, ref_wav)
    wav = peak_normalize(resample(wav, sr, SAMPLE_RATE))
    phones, _ = frontend.phones(_with_final_stop(text.strip(), "en"), "en")
    cond = {"ref_mel_stats": reference_stats(wav, SAMPLE_RATE)}
    return Voice(name or os.path.splitext(os.path.basename(ref_wav))[0], text, "en", frontend.symbol_version, phones,
                 tokenizer.encode(wav), None, cond, {"source": os.path.basename(ref_wav), "decoder": "fast",
                                                     "tokenizer": UNIT_SET})
