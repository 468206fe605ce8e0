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
from specdec.sampling import SamplingParams, accept, round_noise, seen_block, warp  # noqa: E402

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
    # room for the largest draw: 4 sequences of up to 156 tokens, each with up to 2 pages of filler after it
    pool = PagePool(num_blocks=4 * (-(-156 // page_size) + 3), page_size=page_size)
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


def test_engine_on_triton_gives_the_torch_tokens(monkeypatch):
    """Prefill, autoregressive decode and speculative verify (layerskip and a small GPT draft) with every attention
    call and every accept step on the Triton path, pages and KV splits small enough that contexts cross both:
    greedy tokens equal torch's, and so do sampled tokens for the same seeds."""
    from specdec.engine import Engine
    from test_spec import requests, tiny_gpt

    target = tiny_gpt(n_layer=2, d=32, h=2, seed=3, eos_bias=2.0).to(DEVICE)
    gpt_draft = tiny_gpt(n_layer=1, d=32, h=2, seed=4).to(DEVICE)
    greedy, sampled = requests(2, max_new=12), requests(2, params=SamplingParams(max_new_tokens=12, seed=5))
    runs = [(None, greedy), ("layerskip:1", greedy), (gpt_draft, greedy), ("layerskip:1", sampled)]
    monkeypatch.setenv("SPECDEC_ATTENTION", "torch")
    refs = [Engine(target, draft, k=3, page_size=16).generate(reqs) for draft, reqs in runs]
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
    for (draft, reqs), ref in zip(runs, refs):
        modes.clear()
        outs = Engine(target, draft, k=3, page_size=16).generate(reqs)
        for o, r in zip(outs, ref):
            assert torch.equal(o.tokens, r.tokens) and o.finish_reason == r.finish_reason, draft
        assert modes == ({"prefill", "decode"} | ({"verify"} if draft else set())), draft
    assert any(o.stats.draft_acceptance_rate < 1 for o in refs[-1])  # sampled: some drafts rejected and resampled


# ---- sampling -------------------------------------------------------------------------------------------------
V = 1025
PARAMS = [SamplingParams(top_k=15), SamplingParams(top_k=5, top_p=0.8, temperature=0.7),
          SamplingParams(top_k=None, top_p=0.6, temperature=1.3, repetition_penalty=1.0),
          SamplingParams(top_k=1, repetition_penalty=2.0), SamplingParams(top_k=50, top_p=0.95, temperature=0.0)]


def _sampling_batch(seed, n_seq=6):
    """A verify batch: per sequence a history (seen), the pending token and k drafts, logits with EOS near the top
    and likely tokens already seen (so the penalty and the stop test matter), params and bans per row."""
    g = torch.Generator().manual_seed(seed)
    seqs = []
    for b in range(n_seq):
        k = int(torch.randint(0, 6, (1,), generator=g))
        logits = torch.randn(k + 1, V, generator=g) * 3
        logits[:, -1] = logits.max(1).values + torch.rand(k + 1, generator=g) - 0.7
        seen = torch.zeros(V, dtype=torch.bool)
        seen[torch.randint(0, V - 1, (20,), generator=g)] = True
        seen[logits[0, :-1].topk(3).indices] = True
        drafts = torch.randint(0, V, (k,), generator=g)
        n_gen = int(torch.randint(5, 14, (1,), generator=g))  # some rounds straddle the end of the EOS ban
        seqs.append((logits, seen, int(torch.randint(0, V - 1, (1,), generator=g)), drafts, n_gen,
                     PARAMS[(seed + b) % len(PARAMS)]))
    return seqs


def _triton_inputs(seqs):
    tokens = torch.cat([torch.tensor([pending] + drafts.tolist()) for _, _, pending, drafts, _, _ in seqs])
    lens = [len(d) + 1 for _, _, _, d, _, _ in seqs]
    query_start_loc = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    ban = torch.tensor([n + i < 11 for _, _, _, d, n, _ in seqs for i in range(len(d) + 1)])
    params = [p for _, _, _, d, _, p in seqs for _ in range(len(d) + 1)]
    return tokens, query_start_loc, ban, params


@pytest.mark.parametrize("seed", range(2))
def test_warp_kernel_matches_torch_warp(seed):
    from specdec.kernels import triton_sampling
    seqs = _sampling_batch(seed)
    tokens, query_start_loc, ban, params = _triton_inputs(seqs)
    logits = torch.cat([s[0] for s in seqs])
    seen_rows = torch.cat([seen_block(seen, d) for _, seen, _, d, _, _ in seqs])
    ref, ref_eos = warp(logits, seen_rows, ban, params)
    with poisoned_allocations():
        probs, argmax_eos = triton_sampling.warp(
            logits.to(DEVICE), torch.stack([s[1] for s in seqs]).to(DEVICE), tokens.to(DEVICE),
            query_start_loc.to(DEVICE), ban.to(DEVICE), *triton_sampling.row_params(params, V, DEVICE))
    assert torch.equal(argmax_eos.cpu(), ref_eos)
    assert torch.equal(probs.cpu() > 0, ref > 0)  # the same tokens survive penalty, ban, top-p and top-k
    torch.testing.assert_close(probs.cpu(), ref, atol=1e-6, rtol=1e-5)  # softmax rounding only


def test_accept_kernel_gives_the_torch_verdicts_for_the_same_seeds():
    """Same warped probabilities, same generator seeds: the kernel's verdicts are the torch step's, including the
    stop rule and the 1024-wide race of a banned step."""
    verdicts = []
    for seed in range(6):
        ref, got = _accept_both_ways(seed)
        assert got == ref, seed
        verdicts += ref
    stopped, accepted = {v[2] for v in verdicts}, {v[1] for v in verdicts}
    assert stopped == {True, False} and {0, 1} <= accepted and max(accepted) > 1  # stops, rejections, acceptance


def _accept_both_ways(seed):
    from specdec.kernels import triton_sampling
    seqs = _sampling_batch(100 + seed, n_seq=8)
    tokens, query_start_loc, ban, params = _triton_inputs(seqs)
    probs, argmax_eos = warp(torch.cat([s[0] for s in seqs]),
                             torch.cat([seen_block(seen, d) for _, seen, _, d, _, _ in seqs]), ban, params)
    g = torch.Generator().manual_seed(seed)
    q_rows, drafts_per_seq, q0 = [], [], 0
    for _, _, _, d, _, _ in seqs:  # drafts drawn from a distribution near p, so some are accepted, some not
        k = len(d)
        q = torch.softmax(torch.log(probs[q0:q0 + k] + 1e-3) + 0.5 * torch.randn(k, V, generator=g), -1)
        drafts = [int(torch.multinomial(q[i], 1, generator=g)) for i in range(k)]
        tokens[q0 + 1:q0 + 1 + k] = torch.tensor(drafts, dtype=torch.long)
        drafts_per_seq.append((drafts, q))
        q_rows += [q, torch.zeros(1, V)]
        q0 += k + 1
    ref, uniform, noise, q0 = [], [], torch.ones(len(seqs), V), 0
    for b, (drafts, q) in enumerate(drafts_per_seq):
        k, rows = len(drafts), slice(q0, q0 + len(drafts) + 1)
        bans = ban[rows].tolist()
        v = accept(probs[rows], q, drafts, argmax_eos[rows], bans, V - 1, torch.Generator().manual_seed(b))
        ref.append((v.tokens, v.num_accepted, v.stopped))
        u, e = round_noise(k, bans[0], V, torch.Generator().manual_seed(b))
        uniform += [u, torch.zeros(1)]
        noise[b, :e.shape[0]] = e
        q0 += k + 1
    with poisoned_allocations():
        out = triton_sampling.accept(*(t.to(DEVICE) for t in (probs, torch.cat(q_rows), tokens, argmax_eos, ban,
                                                              torch.cat(uniform), noise, query_start_loc)))
    got = []
    for (drafts, _), (n, token, stop) in zip(drafts_per_seq, out.tolist()):
        got.append((drafts[:stop], stop, True) if stop >= 0 else (drafts[:n] + [token], n, False))
    return ref, got
