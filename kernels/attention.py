"""Attention over a paged KV cache: metadata, the torch reference path, and the backend switch.

One call serves three modes, told apart only by the metadata:
  prefill  q_len = whole sequence, prefix-LM mask (the text prefix attends bidirectionally, audio causally);
  decode   q_len = 1;
  verify   q_len = k+1, causal among the new queries, offset by the cached context.
Rule for key j and query at absolute position i of the same sequence: visible iff j <= i or (i < P and j < P),
where P = prefix_len. Decode and verify queries sit past the prefix, so for them this is plain causal.

Cache layout per layer (vLLM / flash-attn "NHD"): k_cache, v_cache [num_blocks, page_size, H, D]; token t of a
sequence lives in slot block_table[t // page_size] * page_size + t % page_size.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property

import torch
import torch.nn.functional as F

BACKENDS = ("torch", "triton")


@dataclass
class AttentionMetadata:
    """Everything attention needs for one forward pass over a ragged batch, built once and shared by all layers."""

    query_lens: list[int]  # new tokens per sequence
    seq_lens: list[int]  # tokens in the cache per sequence once the new ones are written (context + query)
    prefix_lens: list[int]  # bidirectional prefix (text) length per sequence
    block_tables: list[list[int]]  # page ids per sequence, covering at least seq_len tokens
    page_size: int
    device: torch.device | str = "cpu"
    backend: str | None = None  # None: the process default (see `default_backend`)
    slot_mapping: torch.Tensor = field(init=False)  # [T] int64, cache slot of each new token

    def __post_init__(self):
        assert len(self.query_lens) == len(self.seq_lens) == len(self.prefix_lens) == len(self.block_tables)
        slots = []
        for ql, sl, bt in zip(self.query_lens, self.seq_lens, self.block_tables):
            assert 0 < ql <= sl <= len(bt) * self.page_size, (ql, sl, len(bt), self.page_size)
            slots.extend(bt[t // self.page_size] * self.page_size + t % self.page_size for t in range(sl - ql, sl))
        self.slot_mapping = torch.tensor(slots, dtype=torch.long, device=self.device)

    @property
    def num_tokens(self) -> int:
        return sum(self.query_lens)

    # ---- tensors for kernels (vLLM names) ----------------------------------------------------------------
    @cached_property
    def query_start_loc(self) -> torch.Tensor:  # [B+1] int32, cu_seqlens_q
        return torch.tensor([0] + list(_cumsum(self.query_lens)), dtype=torch.int32, device=self.device)

    @cached_property
    def seq_lens_tensor(self) -> torch.Tensor:  # [B] int32
        return torch.tensor(self.seq_lens, dtype=torch.int32, device=self.device)

    @cached_property
    def prefix_lens_tensor(self) -> torch.Tensor:  # [B] int32
        return torch.tensor(self.prefix_lens, dtype=torch.int32, device=self.device)

    @cached_property
    def block_table(self) -> torch.Tensor:  # [B, max_blocks] int32, right-padded with 0
        width = max(-(-sl // self.page_size) for sl in self.seq_lens)
        rows = [bt[:width] + [0] * (width - len(bt[:width])) for bt in self.block_tables]
        return torch.tensor(rows, dtype=torch.int32, device=self.device)

    # ---- plan for the torch path: per sequence, where its keys live and which mask applies -----------------
    @cached_property
    def torch_plan(self) -> list[tuple[int, int, int | torch.Tensor, int, torch.Tensor | None]]:
        """(q0, q_len, keys, seq_len, mask) per sequence; keys is the first slot of a contiguous run of pages (read
        as a view, no copy) or a [seq_len] slot index to gather."""
        plan, q0 = [], 0
        for ql, sl, pl, bt in zip(self.query_lens, self.seq_lens, self.prefix_lens, self.block_tables):
            n_blocks = -(-sl // self.page_size)
            run = bt[:n_blocks]
            if run == list(range(run[0], run[0] + n_blocks)):
                keys: object = run[0] * self.page_size  # contiguous pages: a view, no copy
            else:
                keys = torch.tensor([run[t // self.page_size] * self.page_size + t % self.page_size
                                     for t in range(sl)], dtype=torch.long, device=self.device)
            plan.append((q0, ql, keys, sl, _mask(ql, sl, pl, self.device)))
            q0 += ql
        return plan


def _cumsum(xs):
    total = 0
    for x in xs:
        total += x
        yield total


def _mask(q_len: int, seq_len: int, prefix_len: int, device) -> torch.Tensor | None:
    """[q_len, seq_len] bool (True = attend), or None when every query sees every key (a decode step)."""
    if q_len == 1:
        return None  # the last position sees every key under both the causal and the prefix rule
    i = torch.arange(seq_len - q_len, seq_len, device=device)[:, None]
    j = torch.arange(seq_len, device=device)[None, :]
    mask = (j <= i) | ((i < prefix_len) & (j < prefix_len))
    return None if bool(mask.all()) else mask


def store_kv_torch(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   slot_mapping: torch.Tensor) -> None:
    """Write the new tokens' K and V ([T, H, D]) into their cache slots."""
    H, D = k_cache.shape[-2:]
    k_cache.view(-1, H, D).index_copy_(0, slot_mapping, k)
    v_cache.view(-1, H, D).index_copy_(0, slot_mapping, v)


def paged_attention_torch(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                          meta: AttentionMetadata, scale: float | None = None) -> torch.Tensor:
    """Reference attention over the cache (new K/V already stored). q [T, H, D] → out [T, H, D]."""
    H, D = k_cache.shape[-2:]
    k_flat, v_flat = k_cache.view(-1, H, D), v_cache.view(-1, H, D)
    out = torch.empty_like(q)
    for q0, ql, keys, sl, mask in meta.torch_plan:
        if isinstance(keys, int):
            kb, vb = k_flat[keys:keys + sl], v_flat[keys:keys + sl]  # [S, H, D] views
        else:
            kb, vb = k_flat.index_select(0, keys), v_flat.index_select(0, keys)
        o = F.scaled_dot_product_attention(q[q0:q0 + ql].transpose(0, 1)[None], kb.transpose(0, 1)[None],
                                           vb.transpose(0, 1)[None], attn_mask=mask, scale=scale)
        out[q0:q0 + ql] = o[0].transpose(0, 1)
    return out


def default_backend(device: torch.device | str) -> str:
    """Triton on CUDA, torch elsewhere; `SPECDEC_ATTENTION=torch|triton` overrides (tests force triton on CPU
    together with TRITON_INTERPRET=1)."""
    forced = os.environ.get("SPECDEC_ATTENTION")
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"SPECDEC_ATTENTION={forced!r}: expected one of {', '.join(BACKENDS)}")
        return forced
    return "triton" if torch.device(device).type == "cuda" else "torch"


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
    """Store the new tokens' K/V ([T, H, D]) in their pages, then attend: q [T, H, D] → [T, H, D]."""
    backend = meta.backend or default_backend(q.device)
    if backend == "triton":
        from specdec.kernels import triton_attention  # lazy: triton is optional and slow to import
        return triton_attention.paged_attention(q, k, v, k_cache, v_cache, meta)
    store_kv_torch(k, v, k_cache, v_cache, meta.slot_mapping)
    return paged_attention_torch(q, k_cache, v_cache, meta)
