"""Triton kernels against their torch references; on a machine without CUDA through Triton's interpreter.

TRITON_INTERPRET is read when a kernel is decorated, i.e. when `specdec.kernels.triton_*` is first imported; only
these tests import it, so setting the variable here, before that import, leaves every other test untouched.
"""
import os
from contextlib import contextmanager

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from specdec.cache import BlockTable, PagePool  # noqa: E402
from specdec.kernels import AttentionMetadata, new_kv_cache, paged_attention_torch, store_kv_torch  # noqa: E402
from specdec.kernels import triton_attention  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# |triton - reference| <= atol + rtol·|reference|. fp32: summation order only. fp16/bf16: softmax weights are
# rounded to the input dtype before the P·V product (as in FlashAttention) and the output is rounded once more,
# so allow a few ulps of the dtype (eps 9.8e-4 for fp16, 7.8e-3 for bf16) relative to the output scale (~1).
TOLERANCE = {torch.float32: (2e-5, 2e-5), torch.float16: (4e-3, 4e-3), torch.bfloat16: (3e-2, 3e-2)}


@contextmanager
def poisoned_allocations():
    """Every floating tensor the kernels allocate (output, split partials) starts as NaN, so an element a kernel
    forgets to write, or a partial the reduce reads without its attention program having written it, fails."""
    real = torch.empty

    def empty(*args, **kwargs):
        t = real(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    torch.empty = empty
    try:
        yield
    finally:
        torch.empty = real


def _batch(data, page_size, n_head, head_dim, dtype):
    """A ragged batch over a NaN-poisoned pool: per sequence a cached context (written by the torch store) and
    q_len new tokens in one of three modes; pages of different sequences interleaved."""
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    pool = PagePool(num_blocks=400, page_size=page_size)
    (k_cache, v_cache), = pool.new_kv(1, n_head, head_dim, dtype, DEVICE)
    k_cache.fill_(float("nan"))
    v_cache.fill_(float("nan"))
    filler = BlockTable(pool)
    tables, q_lens, seq_lens, prefix_lens = [], [], [], []
    for _ in range(data.draw(st.integers(1, 4))):
        mode = data.draw(st.sampled_from(["decode", "verify", "prefill"]))
        ctx = data.draw(st.integers(0, 30)) if mode == "prefill" else data.draw(st.integers(1, 140))
        ql = {"decode": 1, "verify": data.draw(st.integers(2, 16)), "prefill": data.draw(st.integers(1, 40))}[mode]
        t = BlockTable(pool)
        if ctx:
            t.append(ctx)
            k, v = (torch.randn(ctx, n_head, head_dim, generator=g).to(dtype).to(DEVICE) for _ in range(2))
            meta = AttentionMetadata([ctx], [ctx], [0], [t.blocks], page_size, DEVICE)
            store_kv_torch(k, v, k_cache, v_cache, meta.slot_mapping)
        filler.append(data.draw(st.integers(1, 2 * page_size)))
        t.append(ql)
        tables.append(t)
        q_lens.append(ql)
        seq_lens.append(ctx + ql)
        # prefill: the text prefix may end inside the new tokens (chunked prefill); decode/verify: inside the cache
        prefix_lens.append(data.draw(st.integers(0, ctx + ql if mode == "prefill" else ctx)))
    meta = AttentionMetadata(q_lens, seq_lens, prefix_lens, [t.blocks for t in tables], page_size, DEVICE)
    qkv = torch.randn(sum(q_lens), 3, n_head, head_dim, generator=g).to(dtype).to(DEVICE)
    return (meta, *qkv.unbind(1), k_cache, v_cache)  # strided views, as the model's fused projection gives


def _fp32_copy(cache):
    out = new_kv_cache(*cache.shape[:2], *cache.shape[2:], dtype=torch.float32, device=cache.device)
    return out.copy_(cache)


@settings(max_examples=30, deadline=None)
@given(data=st.data(), page_size=st.sampled_from([1, 5, 16, 64]), n_head=st.sampled_from([1, 3]),
       head_dim=st.sampled_from([32, 64, 128]), kv_split=st.sampled_from([32, 64, 256]),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_paged_attention_matches_torch_reference(data, page_size, n_head, head_dim, kv_split, dtype):
    meta, q, k, v, k_cache, v_cache = _batch(data, page_size, n_head, head_dim, dtype)
    k_ref, v_ref = _fp32_copy(k_cache), _fp32_copy(v_cache)
    store_kv_torch(k.float(), v.float(), k_ref, v_ref, meta.slot_mapping)
    with poisoned_allocations():
        triton_attention.store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        out = triton_attention.attend(q, k_cache, v_cache, meta, kv_split)
    torch.testing.assert_close(k_cache.float(), k_ref, rtol=0, atol=0, equal_nan=True)  # the store is a copy
    torch.testing.assert_close(v_cache.float(), v_ref, rtol=0, atol=0, equal_nan=True)
    ref = paged_attention_torch(q.float(), k_ref, v_ref, meta)
    atol, rtol = TOLERANCE[dtype]
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=rtol)


def test_store_skips_padding_slots():
    """slot -1 marks a padding token (a CUDA-graph batch padded to a captured size): nothing is written."""
    pool = PagePool(num_blocks=4, page_size=4)
    (k_cache, v_cache), = pool.new_kv(1, 2, 32, device=DEVICE)
    k_cache.fill_(float("nan"))
    v_cache.fill_(float("nan"))
    k, v = torch.randn(2, 3, 2, 32, device=DEVICE).unbind(0)
    triton_attention.store_kv(k, v, k_cache, v_cache, torch.tensor([5, -1, 2], device=DEVICE))
    k_ref, v_ref = torch.full_like(k_cache, float("nan")), torch.full_like(v_cache, float("nan"))
    store_kv_torch(k[[0, 2]], v[[0, 2]], k_ref, v_ref, torch.tensor([5, 2], device=DEVICE))
    torch.testing.assert_close(k_cache, k_ref, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(v_cache, v_ref, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_long_context_uses_every_split(dtype):
    """One decode and one verify query over 600 keys with the default split (3 splits, crossing every page)."""
    pool = PagePool(num_blocks=40, page_size=64)
    (k_cache, v_cache), = pool.new_kv(1, 2, 64, dtype, DEVICE)
    g = torch.Generator().manual_seed(1)
    tables = [BlockTable(pool), BlockTable(pool)]
    for t, ql in zip(tables, (1, 5)):
        t.append(600)
        k, v = (torch.randn(600, 2, 64, generator=g).to(dtype).to(DEVICE) for _ in range(2))
        store_kv_torch(k, v, k_cache, v_cache, AttentionMetadata([600], [600], [0], [t.blocks], 64).slot_mapping)
    meta = AttentionMetadata([1, 5], [600, 600], [20, 20], [t.blocks for t in tables], 64, DEVICE)
    q = torch.randn(6, 2, 64, generator=g).to(dtype).to(DEVICE)
    with poisoned_allocations():
        out = triton_attention.attend(q, k_cache, v_cache, meta)
    ref = paged_attention_torch(q.float(), _fp32_copy(k_cache), _fp32_copy(v_cache), meta)
    atol, rtol = TOLERANCE[dtype]
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=rtol)


def test_engine_with_triton_attention_gives_the_torch_tokens(monkeypatch):
    """Prefill, autoregressive decode and speculative verify (layerskip and a small GPT draft) with every attention
    call on the Triton path, pages and KV splits small enough that contexts cross both: greedy tokens equal
    torch's."""
    from specdec.engine import Engine
    from test_spec import requests, tiny_gpt

    target = tiny_gpt(n_layer=2, d=32, h=2, seed=3, eos_bias=2.0).to(DEVICE)
    reqs = requests(2, max_new=12)
    monkeypatch.setenv("SPECDEC_ATTENTION", "torch")
    ref = Engine(target).generate(reqs)
    modes = set()
    real = triton_attention.paged_attention

    def spy(*args):
        meta = args[-1]
        ctx = [s - q for q, s in zip(meta.query_lens, meta.seq_lens)]
        modes.update("prefill" if c == 0 else "decode" if q == 1 else "verify" for q, c in zip(meta.query_lens, ctx))
        return real(*args)

    monkeypatch.setattr(triton_attention, "paged_attention", spy)
    monkeypatch.setattr(triton_attention, "TILE_N", 16)
    monkeypatch.setattr(triton_attention, "KV_SPLIT", 16)
    monkeypatch.setenv("SPECDEC_ATTENTION", "triton")
    for draft in (None, "layerskip:1", tiny_gpt(n_layer=1, d=32, h=2, seed=4).to(DEVICE)):
        modes.clear()
        outs = Engine(target, draft, k=3, page_size=16).generate(reqs)
        for o, r in zip(outs, ref):
            assert torch.equal(o.tokens, r.tokens) and o.finish_reason == r.finish_reason, draft
        assert modes == ({"prefill", "decode"} | ({"verify"} if draft else set())), draft
