"""Prompt semantic tokens of a reference clip: chinese-hubert-base features → SoVITS `ssl_proj` + codebook nearest.

Upstream (gpt-sovits.md §6): load the reference at 16 kHz, reject it outside 3-10 s, append
zeros(int(32000 · 0.3)) = 9600 samples (0.6 s at 16 kHz: a 32 kHz constant applied to 16 kHz audio), run the
HuBERT model on the raw waveform (its Wav2Vec2 normaliser is bypassed: upstream calls `cnhubert.model(...)`
directly), take `last_hidden_state` [1, T50, 768], then `ssl_proj` (k2 s2 → 25 Hz) and the nearest codebook entry.

The HuBERT forward uses Hugging Face `transformers` (`pip install 'specdec[hubert]'`), loading a local
`chinese-hubert-base` folder (config.json + weights) only, never the hub. Upstream loads the 16 kHz audio with
librosa (soxr); here `audio.resample` (torchaudio's windowed-sinc design) does it, so features of non-16 kHz files
differ slightly from upstream's and a token near a codebook tie may differ.
"""
from __future__ import annotations

import os

import torch

from specdec.errors import SpecdecError
from specdec.models.audio import SSL_RATE, check_reference_duration, load_wav, resample
from specdec.models.sovits import SoVITS

PROMPT_SILENCE = int(32000 * 0.3)  # appended at 16 kHz: 0.6 s


def load_hubert(path: str, dtype: torch.dtype = torch.float32):
    """A local chinese-hubert-base folder (HF format) → transformers HubertModel in eval mode."""
    try:
        from transformers import HubertModel
    except ImportError:
        raise SpecdecError("HuBERT prompt extraction needs transformers: pip install 'specdec[hubert]'") from None
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise SpecdecError(f"{path}: not a HuBERT model folder (no config.json); upstream ships it as "
                           "GPT_SoVITS/pretrained_models/chinese-hubert-base")
    try:
        model = HubertModel.from_pretrained(path, local_files_only=True, torch_dtype=dtype)
    except (OSError, ValueError) as e:
        raise SpecdecError(f"{path}: cannot load HuBERT weights ({str(e).splitlines()[0][:160]})") from None
    return model.eval().requires_grad_(False)


@torch.inference_mode()
def hubert_features(hubert, wav16k: torch.Tensor) -> torch.Tensor:
    """wav16k [N] → [768, T50] HuBERT last_hidden_state of the clip plus upstream's 0.6 s of trailing silence."""
    x = torch.cat([wav16k.float(), wav16k.new_zeros(PROMPT_SILENCE, dtype=torch.float32)])[None]
    return hubert(x.to(hubert.dtype)).last_hidden_state[0].t().float()


@torch.inference_mode()
def prompt_tokens(sovits: SoVITS, hubert, wav16k: torch.Tensor, path: str = "reference") -> torch.Tensor:
    """16 kHz reference [N] (3-10 s) → prompt semantic tokens [T25] long."""
    check_reference_duration(wav16k.shape[-1], SSL_RATE, path)
    return sovits.extract_tokens(hubert_features(hubert, wav16k))


def prompt_tokens_from_file(sovits: SoVITS, hubert, path: str) -> torch.Tensor:
    wav, sr = load_wav(path)
    check_reference_duration(wav.shape[0], sr, path)
    return prompt_tokens(sovits, hubert, resample(wav, sr, SSL_RATE), path)
