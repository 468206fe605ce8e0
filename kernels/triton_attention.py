"""Triton paged attention: a KV store kernel and one attention kernel for decode, verify and prefix-LM prefill.

Same contract as the torch path in `specdec.kernels.attention` (see its docstring for the cache layout and the
mask). Key j is visible to the query at absolute position i iff j <= i or (i < P and j < P); the visible keys are
therefore always the prefix [0, max(i, P - 1)], which is the only mask the kernel needs.

Launch layout (vLLM unified attention's q-blocks + FlashDecoding's split-KV, §6.3-6.6 of the design notes):
  grid (T // BLOCK_Q + B, H, num_splits): one program per (q-block, head, KV split). A q-block is BLOCK_Q queries
  of one sequence; sequence b owns q-blocks from query_start_loc[b] // BLOCK_Q + b on, an upper bound that needs no
  host sync, and every program finds its sequence by binary search. A split covers a fixed run of KV_SPLIT
  absolute key positions, so a query's partition of its keys does not depend on how many queries share its pass.
  num_splits = cdiv(block_table width · page_size, kv_split). The grid depends on tensor shapes only, never on
  per-sequence lengths, so a step can be captured in a CUDA graph.
  With more than one split each program writes fp32 partials (acc, max, sum) and `_reduce_kernel` merges them.
Softmax is online in fp32 with exp2 and the scale folded into log2 units; fp16/bf16 inputs accumulate in fp32.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from specdec.kernels.attention import AttentionMetadata

BLOCK_Q = 16  # queries per program: a whole verify (q_len <= 16) in one tile; tl.dot needs M >= 16
TILE_N = 32  # keys per inner-loop tile
KV_SPLIT = 256  # keys per split: batch-1 verify at 2k context → 8 splits × 16 heads ≈ one wave on 132 SMs


@triton.jit
def _store_kv_kernel(k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr, n_head, head_dim,
                     s_kt, s_kh, s_kd, s_vt, s_vh, s_vd,
                     s_kcb, s_kcs, s_kch, s_kcd, s_vcb, s_vcs, s_vch, s_vcd, page_size,
                     BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    """One program per new token: copy its [H, D] keys and values into cache slot slot_mapping[t] (-1: skip)."""
    t = tl.program_id(0)
    slot = tl.load(slot_ptr + t)
    if slot < 0:
        return
    h = tl.arange(0, BLOCK_H)[:, None].to(tl.int64)  # head offsets span the whole pool (head-major)
    d = tl.arange(0, BLOCK_D)[None, :]
    ok = (h < n_head) & (d < head_dim)
    blk, off = slot // page_size, slot % page_size
    k = tl.load(k_ptr + t * s_kt + h * s_kh + d * s_kd, mask=ok)
    v = tl.load(v_ptr + t * s_vt + h * s_vh + d * s_vd, mask=ok)
    tl.store(k_cache_ptr + blk * s_kcb + off * s_kcs + h * s_kch + d * s_kcd, k, mask=ok)
    tl.store(v_cache_ptr + blk * s_vcb + off * s_vcs + h * s_vch + d * s_vcd, v, mask=ok)


@triton.jit
def _attention_kernel(q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, part_acc_ptr, part_m_ptr, part_l_ptr,
                      query_start_loc_ptr, seq_lens_ptr, prefix_lens_ptr, block_table_ptr,
                      num_seqs, n_head, head_dim, page_size, qk_scale_log2,
                      s_qt, s_qh, s_qd, s_kb, s_ks, s_kh, s_kd, s_vb, s_vs, s_vh, s_vd, s_ot, s_oh, s_od, s_bt,
                      BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr, TILE_N: tl.constexpr,
                      KV_SPLIT: tl.constexpr, NUM_SPLITS: tl.constexpr, DOT_FP32: tl.constexpr,
                      PRECISION: tl.constexpr):
    qb, h, split = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2)  # int64: big pools
    # this q-block's sequence: the largest b whose first q-block, query_start_loc[b] // BLOCK_Q + b, is <= qb
    b = 0
    hi = num_seqs - 1
    while b < hi:
        mid = (b + hi + 1) // 2
        if tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid <= qb:
            b = mid
        else:
            hi = mid - 1
    q_start = tl.load(query_start_loc_ptr + b)
    q_len = tl.load(query_start_loc_ptr + b + 1) - q_start
    first = (qb - (q_start // BLOCK_Q + b)) * BLOCK_Q  # first query of this block, counted within the sequence
    if first >= q_len:
        return  # padding program of the static grid
    seq_len = tl.load(seq_lens_ptr + b)
    prefix_len = tl.load(prefix_lens_ptr + b)
    rows = first + tl.arange(0, BLOCK_Q)  # [BQ] query index within the sequence
    row_ok = rows < q_len
    tok = (q_start + rows).to(tl.int64)
    # query at absolute position i sees keys [0, max(i, P - 1)]: the prefix-LM rule as one bound per row
    last = tl.minimum(tl.maximum(seq_len - q_len + rows, prefix_len - 1), seq_len - 1)  # [BQ]
    block_last = tl.max(tl.where(row_ok, last, -1), 0)
    kv_start = split * KV_SPLIT
    if kv_start > block_last:
        if NUM_SPLITS > 1:  # no query of this block sees a key of this split: mark the partial empty
            tl.store(part_m_ptr + (tok * n_head + h) * NUM_SPLITS + split, float("-inf"), mask=row_ok)
        return
    kv_end = tl.minimum(kv_start + KV_SPLIT, block_last + 1)

    d = tl.arange(0, BLOCK_D)
    d_ok = d < head_dim
    q = tl.load(q_ptr + tok[:, None] * s_qt + h * s_qh + d[None, :] * s_qd,
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # [BQ, BD]
    if DOT_FP32:
        q = q.to(tl.float32)
    m = tl.full([BLOCK_Q], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_Q], tl.float32)
    acc = tl.zeros([BLOCK_Q, BLOCK_D], tl.float32)
    bt_row = block_table_ptr + b * s_bt
    for t0 in range(kv_start, kv_end, TILE_N):
        t = t0 + tl.arange(0, TILE_N)  # [TN] absolute key positions
        t_ok = t < kv_end
        blk = tl.load(bt_row + t // page_size, mask=t_ok, other=0).to(tl.int64)
        slot_in_page = (t % page_size).to(tl.int64)
        kv_ok = t_ok[:, None] & d_ok[None, :]
        k = tl.load(k_cache_ptr + (blk * s_kb + slot_in_page * s_ks + h * s_kh)[:, None] + d[None, :] * s_kd,
                    mask=kv_ok, other=0.0)  # [TN, BD]
        v = tl.load(v_cache_ptr + (blk * s_vb + slot_in_page * s_vs + h * s_vh)[:, None] + d[None, :] * s_vd,
                    mask=kv_ok, other=0.0)
        if DOT_FP32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale_log2  # [BQ, TN] in log2 units
        s = tl.where(t[None, :] <= last[:, None], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no visible key yet: avoid -inf - -inf
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m - m_safe)
        row_sum = row_sum * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m = m_new

    if NUM_SPLITS == 1:
        out = acc / tl.where(row_sum == 0.0, 1.0, row_sum)[:, None]  # 0 only on padding rows, which are not stored
        tl.store(out_ptr + tok[:, None] * s_ot + h * s_oh + d[None, :] * s_od,
                 out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    else:
        part = (tok * n_head + h) * NUM_SPLITS + split  # [BQ] index into the [T, H, NUM_SPLITS] partials
        tl.store(part_m_ptr + part, m, mask=row_ok)
        tl.store(part_l_ptr + part, row_sum, mask=row_ok)
        tl.store(part_acc_ptr + part[:, None] * BLOCK_D + d[None, :], acc, mask=row_ok[:, None])


@triton.jit
def _reduce_kernel(out_ptr, part_acc_ptr, part_m_ptr, part_l_ptr, n_head, head_dim, s_ot, s_oh, s_od,
                   BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, NUM_SPLITS: tl.constexpr,
                   SPLITS_P2: tl.constexpr):
    """Merge one token's split partials, all heads at once (FlashDecoding):
    out = Σ_s 2^(m_s - M) acc_s / Σ_s 2^(m_s - M) l_s over the splits with a visible key (m_s > -inf)."""
    tok = tl.program_id(0).to(tl.int64)
    h = tl.arange(0, BLOCK_H)[:, None]  # [BH, 1]
    s = tl.arange(0, SPLITS_P2)[None, :]  # [1, SP]
    part = (tok * n_head + h) * NUM_SPLITS + s  # [BH, SP]
    hs_ok = (h < n_head) & (s < NUM_SPLITS)
    m = tl.load(part_m_ptr + part, mask=hs_ok, other=float("-inf"))
    live = m != float("-inf")  # split 0 always holds key 0, so every head has a finite max (NaN: unwritten)
    part_sum = tl.load(part_l_ptr + part, mask=live, other=0.0)
    m_max = tl.max(m, 1)
    m_max = tl.where(m_max > float("-inf"), m_max, 0.0)  # padding heads (h >= n_head) have no live split
    w = tl.where(live, tl.math.exp2(m - m_max[:, None]), 0.0)  # [BH, SP]
    d = tl.arange(0, BLOCK_D)
    acc = tl.load(part_acc_ptr + part[:, :, None] * BLOCK_D + d[None, None, :], mask=live[:, :, None],
                  other=0.0)  # [BH, SP, BD]
    l_sum = tl.sum(part_sum * w, 1)
    out = tl.sum(acc * w[:, :, None], 1) / tl.where(l_sum > 0.0, l_sum, 1.0)[:, None]  # [BH, BD]
    tl.store(out_ptr + tok * s_ot + h * s_oh + d[None, :] * s_od, out.to(out_ptr.dtype.element_ty),
             mask=(h < n_head) & (d[None, :] < head_dim))


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write the new tokens' K and V ([T, H, D]) into cache slots slot_mapping [T] (-1 skips a padding token)."""
    T, H, D = k.shape
    page_size = k_cache.shape[1]
    _store_kv_kernel[(T,)](k, v, k_cache, v_cache, slot_mapping, H, D, *k.stride(), *v.stride(),
                           *k_cache.stride(), *v_cache.stride(), page_size,
                           BLOCK_H=triton.next_power_of_2(H), BLOCK_D=triton.next_power_of_2(D))


def attend(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
           kv_split: int = KV_SPLIT, scale: float | None = None) -> torch.Tensor:
    """Attention over the cache (new K/V already stored): q [T, H, D] → [T, H, D] in q's dtype."""
    assert kv_split % TILE_N == 0, f"kv_split {kv_split} must be a multiple of TILE_N {TILE_N}"
    T, H, D = q.shape
    B = meta.seq_lens_tensor.shape[0]
    page_size = k_cache.shape[1]
    block_d = max(16, triton.next_power_of_2(D))  # tl.dot needs K >= 16
    num_splits = triton.cdiv(meta.block_table.shape[1] * page_size, kv_split)
    out = torch.empty(T, H, D, dtype=q.dtype, device=q.device)
    if num_splits > 1:
        part_acc = torch.empty(T, H, num_splits, block_d, dtype=torch.float32, device=q.device)
        part_m = torch.empty(T, H, num_splits, dtype=torch.float32, device=q.device)
        part_l = torch.empty(T, H, num_splits, dtype=torch.float32, device=q.device)
    else:
        part_acc = part_m = part_l = out  # unused
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    # Triton's interpreter multiplies bf16 tiles as raw uint16; bf16 products are exact in fp32, so upcasting the
    # operands there computes what the GPU's bf16 MMA (fp32 accumulate) computes
    dot_fp32 = q.dtype == torch.bfloat16 and triton.knobs.runtime.interpret
    _attention_kernel[(T // BLOCK_Q + B, H, num_splits)](
        q, k_cache, v_cache, out, part_acc, part_m, part_l,
        meta.query_start_loc, meta.seq_lens_tensor, meta.prefix_lens_tensor, meta.block_table,
        B, H, D, page_size, scale * math.log2(math.e),
        *q.stride(), *k_cache.stride(), *v_cache.stride(), *out.stride(), meta.block_table.stride(0),
        BLOCK_Q=BLOCK_Q, BLOCK_D=block_d, TILE_N=TILE_N, KV_SPLIT=kv_split, NUM_SPLITS=num_splits,
        DOT_FP32=dot_fp32, PRECISION="ieee" if q.dtype == torch.float32 else "tf32")
    if num_splits > 1:
        _reduce_kernel[(T,)](out, part_acc, part_m, part_l, H, D, *out.stride(), BLOCK_H=triton.next_power_of_2(H),
                             BLOCK_D=block_d, NUM_SPLITS=num_splits, SPLITS_P2=triton.next_power_of_2(num_splits))
    return out


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
    """Store the new tokens' K/V ([T, H, D]) in their pages, then attend: q [T, H, D] → [T, H, D]."""
    store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
    return attend(q, k_cache, v_cache, meta, KV_SPLIT)
