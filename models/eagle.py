"""A feature-level draft (EAGLE, Li et al. 2024) for the GPT-SoVITS GPT.

At position t the target turns emb(x_t) into a hidden state h_t through all its layers. The draft replaces
those layers with one or two, and is given a shortcut: the target's hidden state of the previous position,

    u_t = fc([h_{t-1} ; emb(x_t)])  →  draft blocks (causal, own KV pages)  →  ĥ_t  →  target head  →  q(x_{t+1})

While drafting, the draft feeds its own ĥ in place of the target's h for the positions the target has not run
yet; once the target has verified them, the true h replace them (the next round re-feeds those positions).
It shares the target's embeddings and head, so it adds only fc and its blocks: ~1.3 M parameters per 512-wide
block. Exactness never depends on it (q is whatever the draft sampled from).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

import torch
from specdec.kernels import AttentionMetadata
from specdec.models import weights
from specdec.models.gpt import Block, Blocks, GPTConfig
from specdec.models.linear import Linear
from torch import nn

from specdec.errors import SpecdecError

FORMAT_TAG = "specdec-eagle"


@dataclass(frozen=True)
class EagleConfig:
    d_model: int = 512  # the target's width
    n_layer: int = 1
    n_head: int = 16
    norm_eps: float = 1e-5

    def block_config(self) -> GPTConfig:
        return GPTConfig(n_layer=self.n_layer, d_model=self.d_model, n_head=self.n_head, norm_eps=self.norm_eps)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EagleConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class EagleDraft(nn.Module):
    def __init__(self, cfg: EagleConfig):
        super().__init__()
        self.cfg = cfg
        self.fc = Linear(2 * cfg.d_model, cfg.d_model)
        self.layers = Blocks(Block(cfg.block_config()) for _ in range(cfg.n_layer))
        self.draft_temperature = 1.0  # its sampling temperature ÷ the request's (distillation measures it)

    def forward(self, h_prev: torch.Tensor, x_emb: torch.Tensor, meta: AttentionMetadata,
                kv_cache: list) -> torch.Tensor:
        """h_prev, x_emb [T, d] → ĥ [T, d], writing the draft's K/V through `meta.slot_mapping`."""
        return self.layers.forward(self.fc(torch.cat([h_prev, x_emb], dim=-1)), meta, kv_cache)

    def forward_dense(self, h_prev: torch.Tensor, x_emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Training path: [B, T, d] each, mask [B, T, T] bool (True = attend)."""
        x = self.fc(torch.cat([h_prev, x_emb], dim=-1))
        for layer in self.layers:
            x = layer.forward_dense(x, mask)
        return x


def save_eagle(model: EagleDraft, path: str, target_cfg: GPTConfig, dtype: torch.dtype | None = None) -> None:
    weights.write(path, model.state_dict(), FORMAT_TAG, model.cfg.to_dict(), dtype, target=target_cfg.to_dict(),
                  **weights.draft_temperature_meta(model.draft_temperature))


def is_eagle_file(path: str) -> bool:
    return weights.format_of(path) == FORMAT_TAG


def load_eagle(path: str, target_cfg: GPTConfig, dtype: torch.dtype = torch.float32) -> EagleDraft:
    state, config, meta = weights.read(path, FORMAT_TAG, "EAGLE draft")
    cfg = EagleConfig.from_dict(config)
    trained_for = GPTConfig.from_dict(json.loads(meta.get("target", "{}")))
    if cfg.d_model != target_cfg.d_model or trained_for != target_cfg:
        raise SpecdecError(f"{path}: this EAGLE draft was trained for a {trained_for.n_layer}×{trained_for.d_model} "
                           f"GPT, not this {target_cfg.n_layer}×{target_cfg.d_model} one")
    model = weights.load_state(path, EagleDraft(cfg), state, dtype, "EAGLE draft")
    model.draft_temperature = weights.draft_temperature(path, meta)
    return model
