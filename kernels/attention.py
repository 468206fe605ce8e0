"""Attention over a paged KV cache: metadata, the torch reference path, and the backend switch.

One call serves three modes, told apart only by the metadata:
  prefill  q_len = whole sequence, prefix-LM mask (the text prefix attends bidirectionally, audio causally);
  decode   q_len = 1;
  verify   q_len = k+1, causal among the new queries, offset by the cached context.
Rule for key j and query at absolute position i of the same sequence: visible iff j <= i or (i < P and j < P),
where P = prefix_len. Decode and verify queries sit past the prefix, so for them this is plain causal.

Cache layout per layer: k_cache, v_cache of shape [num_blocks, page_size, H, D] (vLLM's "NHD" indexing); token t
of a sequence lives in slot block_table[t // page_size] * page_size + t % page_size. The *storage* is head-major
(`new_kv_cache`): every head's slots are contiguous across the whole pool, so a run of pages is one [H, S, D] view
whose keys stream sequentially. On the 2-core CPU a cold-cache decode attention over 260 keys takes 91 µs that
way against 161 µs over strided NHD storage (measured 2026-11-24). Kernels index through strides.

On CPU, decode and verification passes run inside the whole-block C kernel (models/gpt.py); a prefill pass takes the
C `prefix_attention` kernel where it applies, which skips the masked keys; everything else the torch path here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property

import torch
import torch.nn.functional as F

from specdec.kernels import cpu

BACKENDS = ("torch", "triton")
PADDED_BATCH = 16  # from this many sequences one padded SDPA beats the per-sequence loop (≈10% at 32-200, CPU)


@dataclass
class AttentionMetadata:
    """Everything attention needs for one forward pass over a ragged batch, built once and shared by all layers."""

    query_lens: list[int]  # new tokens per sequence
    seq_lens: list[int]  # tokens in the cache per sequence once the new ones are written (context + query)
    prefix_lens: list[int]  # bidirectional prefix (text) length per sequence
    block_tables: list[list[int]]  # page ids per sequence, covering at least seq_len tokens
    page_size: int
    device: torch.device | str = "cpu"
    backend: str | None = None  # None: the process default for the device (see `default_backend`)
    slot_mapping: torch.Tensor = field(init=False)  # [T] int64, cache slot of each new token
    slot_start: int | None = field(init=False)  # first slot when the new tokens' slots are one run (a slice write)

    def __post_init__(self):
        assert len(self.query_lens) == len(self.seq_lens) == len(self.prefix_lens) == len(self.block_tables)
        slots = []
        for ql, sl, bt in zip(self.query_lens, self.seq_lens, self.block_tables):
            assert 0 < ql <= sl <= len(bt) * self.page_size, (ql, sl, len(bt), self.page_size)
            slots.extend(bt[t // self.page_size] * self.page_size + t % self.page_size for t in range(sl - ql, sl))
        self.slot_mapping = torch.tensor(slots, dtype=torch.long, device=self.device)
        self.slot_start = slots[0] if slots == list(range(slots[0], slots[0] + len(slots))) else None
        self.backend = self.backend or default_backend(self.device)

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

    @cached_property
    def row_plan(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(row_seq, row_keys) [T] int32 for the CPU decode kernel: each new token's sequence and how many keys it
        sees (causal among the new tokens); None when some new token lies in a text prefix (prefill)."""
        if any(sl - ql < pl for ql, sl, pl in zip(self.query_lens, self.seq_lens, self.prefix_lens)):
            return None
        seq = [b for b, ql in enumerate(self.query_lens) for _ in range(ql)]
        keys = [sl - ql + i + 1 for ql, sl in zip(self.query_lens, self.seq_lens) for i in range(ql)]
        return torch.tensor(seq, dtype=torch.int32), torch.tensor(keys, dtype=torch.int32)

    @cached_property
    def visible_keys(self) -> list[torch.Tensor]:
        """Per sequence, [q_len] int32: how many of its first keys each new token sees — the prefix-LM rule above
        always leaves a prefix: the whole text from inside it, else the keys up to the token itself."""
        return [torch.tensor([max(pl, sl - ql + i + 1) for i in range(ql)], dtype=torch.int32)
                for ql, sl, pl in zip(self.query_lens, self.seq_lens, self.prefix_lens)]

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


    @cached_property
    def padded_plan(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """For a batch in one SDPA call: (row_b, row_i) [T] place each query in a [B, Q_max] grid, slots
        [B, S_max] index every key (padding repeats the sequence's last key: masked, but never an unwritten slot
        whose garbage could be NaN, since 0·NaN poisons the weighted sum), mask [B, 1, Q_max, S_max] (padding
        queries see key 0 only, so no softmax row is empty)."""
        dev, ps = self.device, self.page_size
        ql = torch.tensor(self.query_lens, device=dev)
        sl = torch.tensor(self.seq_lens, device=dev)
        pl = torch.tensor(self.prefix_lens, device=dev)
        B, Q, S = len(self.query_lens), max(self.query_lens), max(self.seq_lens)
        row_b = torch.repeat_interleave(torch.arange(B, device=dev), ql)
        row_i = torch.cat([torch.arange(n, device=dev) for n in self.query_lens])
        t = torch.arange(S, device=dev)
        bt = self.block_table.long()
        tc = torch.minimum(t[None], sl[:, None] - 1)  # [B, S] clamped to each sequence's own keys
        slots = bt.gather(1, tc // ps) * ps + tc % ps
        i = (sl - ql)[:, None] + torch.arange(Q, device=dev)[None]  # [B, Q] absolute query positions
        j = t[None, None, :]
        i3, P = i[:, :, None], pl[:, None, None]
        mask = ((j <= i3) | ((i3 < P) & (j < P))) & (j < sl[:, None, None])
        pad_q = torch.arange(Q, device=dev)[None] >= ql[:, None]  # [B, Q]
        mask[pad_q] = j[0, 0] == 0
        return row_b, row_i, slots, mask[:, None]


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


def new_kv_cache(num_blocks: int, page_size: int, n_head: int, head_dim: int, dtype=torch.float32,
                 device="cpu") -> torch.Tensor:
    """[num_blocks, page_size, H, D] pages with head-major storage (see the module docstring)."""
    return torch.empty(n_head, num_blocks, page_size, head_dim, dtype=dtype, device=device).permute(1, 2, 0, 3)


def head_major(cache: torch.Tensor) -> torch.Tensor:
    """[num_blocks, page_size, H, D] cache → its [H, num_slots, D] storage view."""
    nb, ps, H, D = cache.shape
    return cache.permute(2, 0, 1, 3).view(H, nb * ps, D)


def store_kv_torch(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   slot_mapping: torch.Tensor) -> None:
    """Write the new tokens' K and V ([T, H, D]) into their cache slots."""
    head_major(k_cache).index_copy_(1, slot_mapping, k.transpose(0, 1))
    head_major(v_cache).index_copy_(1, slot_mapping, v.transpose(0, 1))


def _store_kv(k, v, k_cache, v_cache, meta: AttentionMetadata) -> None:
    if meta.slot_start is None:
        return store_kv_torch(k, v, k_cache, v_cache, meta.slot_mapping)
    s, T = meta.slot_start, k.shape[0]  # one run of slots (every single-sequence step): a slice copy
    head_major(k_cache)[:, s:s + T].copy_(k.transpose(0, 1))
    head_major(v_cache)[:, s:s + T].copy_(v.transpose(0, 1))


def paged_attention_torch(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                          meta: AttentionMetadata, scale: float | None = None) -> torch.Tensor:
    """Reference attention over the cache (new K/V already stored). q [T, H, D] → out [T, H, D]."""
    k_all, v_all = head_major(k_cache), head_major(v_cache)  # [H, num_slots, D]
    if len(meta.query_lens) >= PADDED_BATCH:
        return _padded_attention(q, k_all, v_all, meta, scale)
    plan = meta.torch_plan
    out = torch.empty_like(q) if len(plan) > 1 else None
    for q0, ql, keys, sl, mask in plan:
        if isinstance(keys, int):
            kb, vb = k_all[:, keys:keys + sl], v_all[:, keys:keys + sl]  # [H, S, D] views
        else:
            kb, vb = k_all.index_select(1, keys), v_all.index_select(1, keys)
        qh = q[q0:q0 + ql].transpose(0, 1)  # [H, q_len, D]
        if ql == 1:
            o = _decode_attention(qh, kb, vb, scale)[None]
        else:
            o = F.scaled_dot_product_attention(qh[None], kb[None], vb[None], attn_mask=mask,
                                               scale=scale)  # [1, H, q_len, D]
        if out is None:
            return o[0].transpose(0, 1)
        out[q0:q0 + ql] = o[0].transpose(0, 1)
    return out


def _decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
    """One query per head against all its keys: q [H, 1, D], k/v [H, S, D] → [H, 1, D]. Two batched GEMVs and a
    softmax beat SDPA's flash kernel here (≈5% of a whole v2 decode step on the 2-core CPU, 2026-11-26, interleaved
    runs, identical tokens): its blocking and online softmax buy nothing for a single query row."""
    w = torch.baddbmm(q.new_empty(()), q, k.transpose(1, 2), beta=0.0, alpha=scale or q.shape[-1] ** -0.5)
    return torch.bmm(w.softmax(-1), v)


def _padded_attention(q, k_all, v_all, meta: AttentionMetadata, scale) -> torch.Tensor:
    """The whole ragged batch in one SDPA over a padded [B, H, Q_max, S_max] grid (keys gathered once per layer)."""
    row_b, row_i, slots, mask = meta.padded_plan
    B, S = slots.shape
    H, _, D = k_all.shape
    kb = k_all.index_select(1, slots.flatten()).view(H, B, S, D).transpose(0, 1)  # [B, H, S, D]
    vb = v_all.index_select(1, slots.flatten()).view(H, B, S, D).transpose(0, 1)
    qp = q.new_zeros(B, mask.shape[2], H, D)
    qp[row_b, row_i] = q
    o = F.scaled_dot_product_attention(qp.transpose(1, 2), kb, vb, attn_mask=mask, scale=scale)  # [B, H, Q, D]
    return o.transpose(1, 2)[row_b, row_i]


def default_backend(device: torch.device | str) -> str:
    """Triton on CUDA, torch elsewhere, for attention and the engine's accept step alike;
    `SPECDEC_ATTENTION=torch|triton` overrides (tests force triton on CPU together with TRITON_INTERPRET=1)."""
    forced = os.environ.get("SPECDEC_ATTENTION")
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"SPECDEC_ATTENTION={forced!r}: expected one of {', '.join(BACKENDS)}")
        return forced
    return "triton" if torch.device(device).type == "cuda" else "torch"


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
    """Store the new tokens' K/V ([T, H, D]) in their pages, then attend: q [T, H, D] → [T, H, D]."""
    if meta.backend == "triton":
        from specdec.kernels import triton_attention  # lazy: triton is optional and slow to import
        return triton_attention.paged_attention(q, k, v, k_cache, v_cache, meta)
    _store_kv(k, v, k_cache, v_cache, meta)
    if meta.row_plan is None and _cpu_prefix_kernel(q, k_cache):
        return _cpu_prefix_attention(q, k_cache, v_cache, meta)
    return paged_attention_torch(q, k_cache, v_cache, meta)


def _cpu_prefix_kernel(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """A prefill pass (some new token in a text prefix: no decode kernel takes it) that kernels/cpu.c
    `prefix_attention` can run: fp32 on CPU, head_dim a multiple of 32, head-major pages."""
    D = q.shape[2]
    return (q.is_cpu and q.dtype == k_cache.dtype == torch.float32 and D % 32 == 0 and q.stride(2) == 1
            and q.stride(1) == D and k_cache.permute(2, 0, 1, 3).is_contiguous() and cpu.available())


def _cpu_prefix_attention(q, k_cache, v_cache, meta: AttentionMetadata) -> torch.Tensor:
    """Per sequence, its rows against the first visible_keys of its own keys (~2× faster than SDPA with the
    prefix-LM mask on a v2 prefill, since masked keys are never computed: 0.5 vs 1.1 ms per layer at 220 rows)."""
    outs, q0 = [], 0
    for b, ql in enumerate(meta.query_lens):
        outs.append(cpu.prefix_attention(q[q0:q0 + ql], k_cache, v_cache, meta.block_table[b],
                                         meta.visible_keys[b]))
        q0 += ql
    return outs[0] if len(outs) == 1 else torch.cat(outs)
