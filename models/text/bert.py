"""Chinese BERT features for the GPT's text stream, from the user's chinese-roberta-wwm-ext-large folder.

Upstream feeds the third-to-last hidden state (layer 22 of 24), [CLS]/[SEP] removed, one row per character,
repeated for each of the character's phones: [1024, n_phones]. Runs through `transformers` (the `zh` extra),
from local files only.
"""
from __future__ import annotations

import os

import torch

from specdec.errors import SpecdecError


class ChineseBert:
    def __init__(self, path: str):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise SpecdecError(f"{path}: not a chinese-roberta folder (config.json + weights + vocab.txt expected)")
        try:
            from transformers import AutoModelForMaskedLM, AutoTokenizer
        except ImportError:
            raise SpecdecError("Chinese BERT features need transformers: pip install 'specdec[zh]'") from None
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForMaskedLM.from_pretrained(path, local_files_only=True).float().eval()
        self.dim = self.model.config.hidden_size  # 1024 for chinese-roberta-wwm-ext-large

    @torch.inference_mode()
    def features(self, text: str, word2ph: list[int]) -> torch.Tensor:
        """Normalised text (one token per character) → [hidden, sum(word2ph)] float32."""
        inputs = self.tokenizer(text, return_tensors="pt")
        hidden = self.model(**inputs, output_hidden_states=True).hidden_states[-3][0, 1:-1]  # [chars, hidden]
        if hidden.shape[0] != len(word2ph):
            raise SpecdecError(f"BERT tokenised {text[:20]!r}… into {hidden.shape[0]} tokens for {len(word2ph)} characters")
        return hidden.repeat_interleave(torch.tensor(word2ph), dim=0).T.contiguous()
