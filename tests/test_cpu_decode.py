"""The whole-block CPU decode kernel (kernels/cpu.c `decode_layers`) against the per-op torch path: random ragged
batches over shuffled pages, fp16-exact and int8 weights; when it must step aside; rebuilt after a weight update."""
import copy
import random

import pytest
import torch

from specdec.cache import PagePool
from specdec.kernels import AttentionMetadata, cpu
from specdec.models.gpt import GPT, GPTConfig
from specdec.models.int8 import quantize_gpt

pytestmark = pytest.mark.skipif(not cpu.available(), reason="no AVX2/F16C CPU or no C compiler")


def _gpt(n_layer=3, d=64, h=4, fp16=True, seed=0) -> GPT:
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(n_layer=n_layer, d_model=d, n_head=h, phoneme_vocab_size=64))
    with torch.no_grad():
        for name, p in gpt.named_parameters():
            p.copy_(1 + 0.1 * torch.randn(p.shape) if "norm" in name and name.endswith("weight")
                    else torch.randn(p.shape) / (p.shape[-1] ** 0.5 if p.ndim > 1 else 10))
            if fp16:
                p.copy_(p.half().float())
    return gpt.eval()


def _ragged_batch(gpt: GPT, rng: random.Random, page_size: int):
    """Two page pools (one per path) holding the same prefilled sequences on scattered pages, and the metadata of
    a pass of new rows (≤ cpu.MAX_ROWS in all), each sequence with its own text prefix and context."""
    cfg = gpt.cfg
    B = rng.randint(1, 3)
    contexts = [rng.randint(1, 150) for _ in range(B)]
    prefixes = [rng.randint(1, c) for c in contexts]
    qlens = [rng.randint(1, cpu.MAX_ROWS // B) for _ in range(B)]
    need = [-(-(c + q) // page_size) for c, q in zip(contexts, qlens)]
    pages = rng.sample(range(sum(need) + 5), sum(need))  # distinct, in no order
    tables = [pages[sum(need[:b]):sum(need[:b + 1])] for b in range(B)]
    kvs = [PagePool(sum(need) + 5, page_size).new_kv(cfg.n_layer, cfg.n_head, cfg.head_dim) for _ in range(2)]
    x_prefill = torch.randn(sum(contexts), cfg.d_model)
    with torch.inference_mode():
        for kv in kvs:  # prefill: the per-op path (its rows lie in the text prefix)
            gpt.layers.per_op(x_prefill, AttentionMetadata(contexts, contexts, prefixes, tables, page_size), kv)
    meta = AttentionMetadata(qlens, [c + q for c, q in zip(contexts, qlens)], prefixes, tables, page_size)
    return kvs, meta, torch.randn(sum(qlens), cfg.d_model)


@pytest.mark.parametrize("int8", [False, True], ids=["fp16-exact", "int8"])
def test_decode_kernel_matches_per_op_path_on_random_ragged_batches(int8, avx512):
    """Layer by layer on the same input. int8 linears quantise their input rows (W8A8), and the C attention and
    LayerNorm round differently from torch's, so now and then an element lands on the other side of a rounding
    boundary: that row then differs by about one quantisation step. One such row per layer is allowed for int8
    (over these 24 layer passes one occurs, 2026-11-27); every other row must agree to float rounding."""
    rng = random.Random(7)
    for trial in range(12):
        gpt = _gpt(n_layer=2, d=rng.choice([64, 96, 128]), h=rng.choice([2, 4]), seed=trial)  # head sizes 16-64
        gpt = quantize_gpt(gpt) if int8 else gpt
        page_size = rng.choice([4, 12, 16, 64])  # 12: a page of one 8-key group and a tail
        (kv_fused, kv_ref), meta, x = _ragged_batch(gpt, rng, page_size)
        with torch.inference_mode():
            assert gpt.layers._cpu_decode(x.shape[0], x, meta, kv_fused, 0, gpt.cfg.n_layer) is not None
            for layer in range(gpt.cfg.n_layer):
                got = gpt.layers(x, meta, kv_fused, layer, layer + 1)
                ref = gpt.layers.per_op(x, meta, kv_ref, layer, layer + 1)
                off = ((got - ref).abs() > 2e-5 + 1e-5 * ref.abs()).any(1)
                assert int(off.sum()) <= (1 if int8 else 0), (trial, layer, off)
                torch.testing.assert_close(got[~off], ref[~off], atol=2e-5, rtol=1e-5)
                assert float((got - ref).abs().max()) < 0.05
                x = got
        for (k1, v1), (k2, v2) in zip(kv_fused, kv_ref):  # the new K/V landed in the same slots
            slots = meta.slot_mapping
            torch.testing.assert_close(k1.flatten(0, 1)[slots], k2.flatten(0, 1)[slots], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(v1.flatten(0, 1)[slots], v2.flatten(0, 1)[slots], atol=1e-5, rtol=1e-5)


def test_decode_kernel_steps_aside_where_it_does_not_apply():
    gpt = _gpt()
    pool = PagePool(4, 16)
    kv = pool.new_kv(gpt.cfg.n_layer, gpt.cfg.n_head, gpt.cfg.head_dim)
    decode = AttentionMetadata([1], [20], [10], [[0, 1]], 16)
    with torch.inference_mode():
        assert gpt.layers._cpu_decode(1, torch.randn(1, 64), decode, kv, 0, 3) is not None
        assert gpt.layers._cpu_decode(1, torch.randn(1, 64), decode, kv, 1, 3) is not None  # a layer range (layerskip)
        prefill = AttentionMetadata([5], [5], [3], [[0]], 16)  # rows inside the text prefix: bidirectional
        assert gpt.layers._cpu_decode(5, torch.randn(5, 64), prefill, kv, 0, 3) is None
        many = AttentionMetadata([cpu.MAX_ROWS + 1], [40], [10], [[0, 1, 2]], 16)
        assert gpt.layers._cpu_decode(cpu.MAX_ROWS + 1, torch.randn(cpu.MAX_ROWS + 1, 64), many, kv, 0, 3) is None
        assert gpt.layers._cpu_decode(1, torch.randn(1, 64).double(), decode, kv, 0, 3) is None
    assert gpt.layers._cpu_decode(1, torch.randn(1, 64), decode, kv, 0, 3) is None  # autograd recording: training
    fp32 = _gpt(fp16=False)  # weights fp16 cannot hold exactly: no packed linears, the fp32 GEMM per op
    with torch.inference_mode():
        assert fp32.layers._cpu_decode(1, torch.randn(1, 64), decode, kv, 0, 3) is None


def _one_step_on_random_pages(gpt: GPT, block_table: list[int]):
    """Pages of 16 slots holding random K/V, the metadata of one decode row over 19 cached tokens (a 10-token text
    prefix) on `block_table`, and the row."""
    kv = PagePool(4, 16).new_kv(gpt.cfg.n_layer, gpt.cfg.n_head, gpt.cfg.head_dim)
    with torch.no_grad():
        for k, v in kv:
            k.normal_(), v.normal_()
    return kv, AttentionMetadata([1], [20], [10], [block_table], 16), torch.randn(1, gpt.cfg.d_model)


@pytest.mark.parametrize("int8", [False, True], ids=["fp16-exact", "int8"])
def test_a_decode_pass_in_one_call_has_the_bits_of_its_steps(int8):
    """GPT.decode (embedding, blocks and head in one C call) against embed_audio → forward → logits, which take
    the same blocks kernel: equal bits, K/V pages included, on ragged rows at scattered audio positions."""
    rng = random.Random(3)
    for trial in range(4):
        gpt = _gpt(n_layer=2, d=64, h=4, seed=trial)
        gpt = quantize_gpt(gpt) if int8 else gpt
        with torch.no_grad():
            gpt.audio_alpha.fill_(0.7 + 0.1 * trial)  # a product that rounds
        (kv_one, kv_steps), meta, x = _ragged_batch(gpt, rng, rng.choice([4, 16]))
        tokens = torch.randint(0, gpt.cfg.vocab_size, (x.shape[0],))
        positions = torch.randint(0, 300, (x.shape[0],))
        with torch.inference_mode():
            assert gpt.layers._cpu_decode(x.shape[0], x, meta, kv_one, 0, gpt.cfg.n_layer) is not None
            h, logits = gpt.decode(tokens, positions, meta, kv_one)
            h_ref = gpt(gpt.embed_audio(tokens, positions), meta, kv_steps)
            assert torch.equal(h, h_ref) and torch.equal(logits, gpt.logits(h_ref))
        slots = meta.slot_mapping
        for (k1, v1), (k2, v2) in zip(kv_one, kv_steps):
            assert torch.equal(k1.flatten(0, 1)[slots], k2.flatten(0, 1)[slots])
            assert torch.equal(v1.flatten(0, 1)[slots], v2.flatten(0, 1)[slots])


def test_decode_kernel_follows_in_place_weight_updates():
    gpt = _gpt()
    kv, meta, x = _one_step_on_random_pages(gpt, [2, 0])
    with torch.inference_mode():
        before = gpt(x, meta, kv)
        gpt.layers[1].ffn_in.weight.mul_(0.5)
        gpt.layers[2].norm2.bias.add_(1.0)
        after = gpt(x, meta, kv)
        ref = gpt.layers.per_op(x, meta, kv)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, ref, atol=2e-5, rtol=1e-5)


def test_decode_kernel_follows_a_fused_optimiser_step():
    """AdamW(fused=True) leaves the version counters where they were: the kernel's plan must go with the switch back
    to eval mode, as the Linears' packs do."""
    gpt = _gpt()
    kv, meta, x = _one_step_on_random_pages(gpt, [2, 0])
    with torch.no_grad():
        before = gpt(x, meta, kv)
    gpt.train()
    opt = torch.optim.AdamW(gpt.layers.parameters(), lr=1e-2, fused=True)
    gpt.forward_dense(x[None], torch.ones(1, x.shape[0], x.shape[0], dtype=torch.bool)).square().mean().backward()
    opt.step()
    gpt.eval()
    with torch.no_grad():
        after, ref = gpt(x, meta, kv), gpt.layers.per_op(x, meta, kv)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, ref, atol=2e-5, rtol=1e-5)


def test_a_deep_copy_runs_on_its_own_weights():
    """The kernel's plan (pointers into packed weights) lives outside the module: a copy made after a decode step
    builds its own instead of reading the original's weights."""
    gpt = _gpt()
    kv, meta, x = _one_step_on_random_pages(gpt, [1, 3])
    with torch.inference_mode():
        before = gpt(x, meta, kv)
        twin = copy.deepcopy(gpt)
        with torch.no_grad():
            for p in twin.parameters():
                p.copy_((p * 0.9).half().float())
        torch.testing.assert_close(twin(x, meta, kv), twin.layers.per_op(x, meta, kv), atol=2e-5, rtol=1e-5)
        assert torch.equal(gpt(x, meta, kv), before)
