"""int8 weights: close to fp32, each row quantised on its own; int8 drafts keep speculation exact; the eco target is
labelled lossy and, being one well-defined model, speculation over it reproduces its own autoregressive output."""
import json

import pytest
import torch

from specdec import SamplingParams
from specdec.engine import Engine, Request
from specdec.errors import SpecdecError
from specdec.kernels import cpu
from specdec.models.checkpoint import save_gpt
from specdec.models.int8 import Int8Linear, quantize_gpt
from specdec.models.linear import Linear
from test_spec import ALPHA, PV, _min_p_value, _sample_many, requests, sticky_gpt, tiny_gpt


def _linear(bias=True):
    torch.manual_seed(0)
    return Linear(256, 384, bias=bias)


@pytest.mark.parametrize("bias", [True, False])
def test_int8_linear_is_close_to_fp32(bias):
    lin = _linear(bias)
    x = torch.randn(7, 256) * torch.logspace(-2, 2, 7)[:, None]  # rows of very different scales
    with torch.inference_mode():
        ref, got = lin(x), Int8Linear(lin)(x)
    # per row: 7-bit activations and 8-bit weights leave a few percent of the row's output scale
    err = (got - ref).abs().amax(1) / ref.abs().amax(1)
    assert bool((err < 0.05).all()), err
    assert bool((err > 0).any())  # it is lossy: this is not the fp32 path in disguise


def test_a_rows_result_does_not_depend_on_its_batch():
    """Weights only are quantised (no activation scale shared across rows), and the int8 kernel computes every row
    alone: bit for bit the same in any batch. Without the kernel torch's GEMM may order a row's sums by batch
    shape, so there it holds to rounding."""
    q = Int8Linear(_linear())
    x = torch.randn(6, 256)
    x[3] *= 100.0  # a row that would set a shared activation scale
    same = torch.equal if cpu.available() else lambda a, b: torch.allclose(a, b, rtol=1e-5, atol=1e-5 * a.abs().max())
    with torch.inference_mode():
        batch = q(x)
        for i in range(6):
            assert same(q(x[i:i + 1])[0], batch[i])
        assert same(q(x.view(2, 3, 256)).view(6, -1), batch)


def test_quantize_gpt_shares_everything_but_the_block_matmuls():
    gpt = tiny_gpt()
    before = {k: v.clone() for k, v in gpt.state_dict().items()}
    q = quantize_gpt(gpt)
    assert q.quantization == "int8" and gpt.quantization is None
    assert q.head is gpt.head and q.audio_embedding is gpt.audio_embedding and q.text_alpha is gpt.text_alpha
    assert all(isinstance(b.qkv, Int8Linear) and b.norm1 is o.norm1 for b, o in zip(q.layers, gpt.layers))
    assert all(isinstance(b.ffn_out, Linear) for b in gpt.layers)
    assert all(torch.equal(v, before[k]) for k, v in gpt.state_dict().items())
    assert quantize_gpt(gpt, 2).cfg.n_layer == 2 and len(quantize_gpt(gpt, 2).layers) == 2
    with pytest.raises(SpecdecError, match="already quantised"):
        quantize_gpt(q)
    with pytest.raises(SpecdecError, match="int8:9"):
        quantize_gpt(gpt, 9)
    with pytest.raises(SpecdecError, match="refusing to save"):
        save_gpt(q, "/nonexistent/q.safetensors")


@pytest.fixture(scope="module")
def target():
    return tiny_gpt(eos_bias=3.5)


def test_int8_drafts_keep_greedy_tokens(target):
    ref = Engine(target).generate(requests(3))
    small = quantize_gpt(tiny_gpt(2, 64, 4, seed=9))
    for name, draft in {"int8": "int8", "int8:2": "int8:2", "int8 gpt-2layer": small}.items():
        for k in (1, 3, 6):
            engine = Engine(target, draft, k=k)
            for o, r in zip(engine.generate(requests(3)), ref):
                assert torch.equal(o.tokens, r.tokens), (name, k)
                assert o.finish_reason == r.finish_reason and not o.stats.lossy
            assert engine.pool.num_free == engine.pool.num_blocks


def test_int8_copy_of_a_draft_file_drafts_exactly(target, tmp_path):
    """`int8:FILE`: the draft in FILE (a GPT or an EAGLE head) with its block matmuls in int8."""
    from specdec.drafters import EagleDrafter, GPTDrafter, make_drafter
    from specdec.models.eagle import EagleConfig, EagleDraft, save_eagle
    torch.manual_seed(5)
    eagle = EagleDraft(EagleConfig(d_model=target.cfg.d_model, n_layer=1, n_head=target.cfg.n_head))
    save_eagle(eagle, str(tmp_path / "eagle.safetensors"), target.cfg)
    save_gpt(tiny_gpt(2, 64, 4, seed=9), str(tmp_path / "gpt.safetensors"))
    ref = Engine(target).generate(requests(2))
    for name, kind in (("eagle", EagleDrafter), ("gpt", GPTDrafter)):
        d = make_drafter(f"int8:{tmp_path / name}.safetensors", target)
        assert isinstance(d, kind) and all(isinstance(b.qkv, Int8Linear) for b in d.model.layers)
        for o, r in zip(Engine(target, d, k=3).generate(requests(2)), ref):
            assert torch.equal(o.tokens, r.tokens) and o.stats.num_drafts > 0 and not o.stats.lossy
    with pytest.raises(SpecdecError, match="GPT or EAGLE draft file"):
        make_drafter("int8:ngram", target)


def test_int8_copy_of_the_target_accepts_almost_everything(target):
    st = Engine(target, "int8", k=4).generate(requests(1, params=SamplingParams(max_new_tokens=60, seed=3)))[0].stats
    assert st.num_drafts > 0 and st.draft_acceptance_rate > 0.8


def test_a_batch_with_an_int8_draft_gives_each_request_what_it_gets_alone(target):
    reqs = [Request(r.phones, r.prompt, params=SamplingParams(max_new_tokens=30, seed=s))
            for r, s in zip(requests(4), (11, 12, 13, 14))]
    engine = Engine(target, "int8", k=3)
    together = engine.generate(reqs)
    for r, a in zip(reqs, together):
        assert torch.equal(a.tokens, engine.generate([r])[0].tokens)


def test_int8_draft_sampling_has_the_autoregressive_distribution():
    target = sticky_gpt()
    g = torch.Generator().manual_seed(0)
    phones = torch.randint(0, PV, (9,), generator=g)
    prompt = torch.randint(0, 1024, (8,), generator=g)
    base = _sample_many(Engine(target), phones, prompt, seed0=0)
    spec = _sample_many(Engine(target, "int8", k=4), phones, prompt, seed0=10**6)
    assert _min_p_value(base, spec) > ALPHA


def test_eco_target_is_labelled_lossy_and_speculation_over_it_is_exact(target):
    eco = quantize_gpt(target)
    ref = Engine(eco).generate(requests(3))
    assert all(o.stats.lossy for o in ref)
    for draft in ("layerskip:2", "ngram"):
        for o, r in zip(Engine(eco, draft, k=4).generate(requests(3)), ref):
            assert torch.equal(o.tokens, r.tokens), draft
    with pytest.raises(SpecdecError, match="already quantised"):
        Engine(eco, "int8")


def test_bench_times_int8_drafts_and_labels_the_eco_target_lossy(tmp_path):
    from specdec.models.checkpoint import upstream_checkpoint
    from test_cli import run
    ckpt = tmp_path / "tiny.ckpt"
    torch.save(upstream_checkpoint(tiny_gpt(2, 32, 2)), ckpt)
    rc, _, err = run("bench", "--gpt", str(ckpt), "--draft", "int8", "--draft", "layerskip:1", "--k", "2", "--tokens",
                     "12", "--requests", "1", "--repeats", "1", "--no-upstream", "--eco", "-o", str(tmp_path))
    assert rc == 0, err
    rows = {r["name"]: r for r in json.loads((tmp_path / "bench_tiny.json").read_text())["rows"]}
    # every draft over the eco target too, but the int8 copy (the eco target is one already)
    assert set(rows) == {"AR", "int8 k=2", "layerskip:1 k=2", "eco AR (int8 target, lossy)", "eco layerskip:1 k=2"}
    assert all(rows[n]["lossy"] == n.startswith("eco") for n in rows)
    assert "**LOSSY**" in (tmp_path / "bench_tiny.md").read_text()


def test_int8_kernel_and_many_row_path_compute_the_same_products():
    """≤ MAX_ROWS rows take the int8 GEMV kernel, more rows torch's GEMM over the same integers: they may differ
    only in summation order, so a row's result does not depend on how many rows share its call."""
    from specdec.models.int8 import quantize_weight
    lin = _linear()
    q, (Q, scale) = Int8Linear(lin), quantize_weight(lin.weight.detach())
    x = torch.randn(cpu.MAX_ROWS + 3, 256)
    with torch.inference_mode():
        many = q(x)  # the GEMM path
        few = torch.cat([q(x[i:i + cpu.MAX_ROWS]) for i in range(0, x.shape[0], cpu.MAX_ROWS)])
        ref = (x.double() @ Q.double().t()) * scale.double() + q.bias.double()
    torch.testing.assert_close(many.double(), ref, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(few.double(), ref, atol=2e-5, rtol=1e-5)
    assert q.gemv is not None or not cpu.available()
    assert (q.amx is not None) == cpu.amx_available()  # 256 × 384 fits AMX's tiles


amx = pytest.mark.skipif(not cpu.amx_available(), reason="no AMX here")


@amx
def test_amx_keeps_every_bit_of_the_activations():
    """x = 1 + 2^-9 + 2^-17 needs all three bf16 parts (1, 2^-9, 2^-17): against a column of ones over one 32-wide
    K step the fp32 sum 32·x is exact, so any lost part shows."""
    x = torch.full((17, 32), 1 + 2**-9 + 2**-17)
    x[1::2] *= -3.0
    y = cpu.AmxInt8(torch.ones(32, 16, dtype=torch.int8), torch.ones(16), None)(x)
    assert torch.equal(y, (32 * x[:, :16].double()).float())


@amx
@pytest.mark.parametrize("M,K,N", [(17, 64, 48), (37, 512, 80), (177, 2048, 32)])
def test_amx_int8_matches_the_fp32_gemm_over_the_same_integers(M, K, N):
    """Ragged rows (a partial last 16-row block), column groups of 3 and 2 blocks, both threads' shares: within
    fp32 rounding of the exact result, as torch's fp32 GEMM is."""
    g = torch.Generator().manual_seed(M)
    q = torch.randint(-127, 128, (K, N), dtype=torch.int8, generator=g)
    scale, bias = torch.rand(N, generator=g), torch.randn(N, generator=g)
    x = torch.randn(M, K, generator=g) * torch.logspace(-3, 3, M)[:, None]
    y = cpu.AmxInt8(q, scale, bias)(x)
    ref = (x.double() @ q.double()) * scale.double() + bias.double()
    bound = (x.double().abs() @ q.double().abs()) * scale.double()  # what fp32 rounding errors scale with
    assert float(((y.double() - ref).abs() / bound).max()) < 1e-6
    fp32 = (x @ q.float()) * scale + bias
    assert float(((fp32.double() - ref).abs() / bound).max()) < 1e-6


def test_int8_distance_measures_the_eco_targets_departure():
    """Eco mode's reported cost: zero (to rounding) for a target whose block weights are int8 values already,
    clearly above zero for one whose are not; one distribution per generated position and the one after."""
    from specdec.api import generate
    from specdec.bench import int8_distance
    from specdec.models.int8 import quantize_weight
    gpt = tiny_gpt(eos_bias=-5.0)
    g = torch.Generator().manual_seed(3)
    seqs = []
    for n_text, n_prompt in ((6, 4), (11, 9)):
        phones, prompt = torch.randint(0, PV, (n_text,), generator=g), torch.randint(0, 1024, (n_prompt,), generator=g)
        seqs.append((phones, prompt, generate(gpt, phones, prompt, max_new_tokens=12, seed=n_text).tokens))
    far = int8_distance(gpt, seqs)
    assert far["positions"] == sum(len(s[2]) + 1 for s in seqs)
    assert 1e-3 < far["tv_softmax"]["median"] < 0.5
    with torch.no_grad():
        for b in gpt.layers:
            for lin in (b.qkv, b.out, b.ffn_in, b.ffn_out):
                q, scale = quantize_weight(lin.weight)
                lin.weight.copy_(q.float() * scale[:, None])
    near = int8_distance(gpt, seqs)
    assert near["tv_softmax"]["max"] < 1e-5 and near["argmax_agreement"] == 1.0
