"""The CPU prefill attention kernel (kernels/cpu.c `prefix_attention`) against the torch reference: random ragged
prefill passes over shuffled pages, AVX-512 and AVX2; the passes it must leave to torch."""
import random

import pytest
import torch

from specdec.cache import PagePool
from specdec.kernels import AttentionMetadata, cpu, paged_attention, paged_attention_torch

pytestmark = pytest.mark.skipif(not cpu.available(), reason="no AVX2/F16C CPU or no C compiler")


@pytest.fixture
def kernel_calls(monkeypatch):
    """How many sequences the C kernel served."""
    calls = []
    real = cpu.prefix_attention

    def spy(*args):
        calls.append(args[0].shape[0])
        return real(*args)
    monkeypatch.setattr(cpu, "prefix_attention", spy)
    return calls


def _pass(rng: random.Random, H: int, D: int, page_size: int, rows_in_prefix: bool = True):
    """A pass over B sequences on scattered pages: each with cached context, new rows and a text prefix (that some
    new row lies in, unless rows_in_prefix is False); the cache holds random K/V for the context."""
    B = rng.randint(1, 3)
    qlens = [rng.randint(1, 300) for _ in range(B)]
    contexts = [rng.choice([0, 0, rng.randint(1, 90)]) for _ in range(B)]
    seq_lens = [c + q for c, q in zip(contexts, qlens)]
    if rows_in_prefix:
        prefixes = [rng.randint(c + 1, s) for c, s in zip(contexts, seq_lens)]
    else:
        prefixes = [rng.randint(0, c) for c in contexts]
    need = [-(-s // page_size) for s in seq_lens]
    pages = rng.sample(range(sum(need) + 4), sum(need))  # distinct, in no order
    tables = [pages[sum(need[:b]):sum(need[:b + 1])] for b in range(B)]
    k_cache, v_cache = PagePool(sum(need) + 4, page_size).new_kv(1, H, D)[0]
    k_cache.normal_(), v_cache.normal_()
    meta = AttentionMetadata(qlens, seq_lens, prefixes, tables, page_size)
    T = sum(qlens)
    qkv = 3 * torch.randn(T, 3, H, D)  # scaled up: peaked softmax rows as well as flat ones
    return meta, qkv.unbind(1), k_cache, v_cache


@pytest.mark.parametrize("H,D", [(16, 32), (3, 64), (2, 96), (1, 160)])  # 160: past the decode kernel's MAX_D
def test_prefill_kernel_matches_the_reference_on_ragged_passes(avx512, kernel_calls, H, D):
    rng = random.Random(H * 1000 + D)
    for page_size in (16, 64):
        for _ in range(3):
            meta, (q, k, v), k_cache, v_cache = _pass(rng, H, D, page_size)
            out = paged_attention(q, k, v, k_cache, v_cache, meta)  # stores K/V, then the kernel
            ref = paged_attention_torch(q, k_cache, v_cache, meta)
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)  # fp32 softmax, other summation order
            assert kernel_calls[-len(meta.query_lens):] == meta.query_lens


def test_passes_past_the_prefix_and_odd_head_sizes_stay_with_torch(kernel_calls):
    rng = random.Random(7)
    meta, (q, k, v), k_cache, v_cache = _pass(rng, 2, 32, 16, rows_in_prefix=False)  # decode / verification
    paged_attention(q, k, v, k_cache, v_cache, meta)
    meta, (q, k, v), k_cache, v_cache = _pass(rng, 4, 16, 16)  # head_dim 16: not a multiple of 32
    out = paged_attention(q, k, v, k_cache, v_cache, meta)
    assert kernel_calls == []
    torch.testing.assert_close(out, paged_attention_torch(q, k_cache, v_cache, meta))
