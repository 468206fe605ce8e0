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
    """Each row is quantised with its own scale (none shared across rows) and its int32 sums are exact: bit for bit
    the same in any batch."""
    q = Int8Linear(_linear())
    x = torch.randn(6, 256)
    x[3] *= 100.0  # a row that would set a shared activation scale
    with torch.inference_mode():
        batch = q(x)
        for i in range(6):
            assert torch.equal(q(x[i:i + 1])[0], batch[i])
        assert torch.equal(q(x.view(2, 3, 256)).view(6, -1), batch)


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


def _int8_case(M: int, K: int, N: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-127, 128, (K, N), dtype=torch.int8, generator=g)
    scale, bias = torch.rand(N, generator=g), torch.randn(N, generator=g)
    x = torch.randn(M, K, generator=g) * torch.logspace(-3, 3, M)[:, None]  # rows of very different scales
    return q, scale, bias, x


def test_every_int8_path_gives_the_same_bits():
    """≤ MAX_ROWS rows take the VNNI kernel, more rows AMX (or torch's int8 GEMM where a kernel is missing); the int32
    sums are exact and the float epilogue is the same operations in the same order, so all agree with the torch
    definition bit for bit — and that definition is x_q·Q scaled, computed here in float64 from its parts."""
    from specdec.models.int8 import quantize_rows, quantize_weight, w8a8
    lin = _linear()
    q, (Q, scale) = Int8Linear(lin), quantize_weight(lin.weight.detach())
    x = torch.randn(cpu.MAX_ROWS + 3, 256)
    with torch.inference_mode():
        many = q(x)
        few = torch.cat([q(x[i:i + cpu.MAX_ROWS]) for i in range(0, x.shape[0], cpu.MAX_ROWS)])
        ref = w8a8(x, Q.t().contiguous(), scale, q.bias)
    assert torch.equal(many, ref) and torch.equal(few, ref)
    xq, s = quantize_rows(x)
    acc = xq.double() @ Q.double().t()
    assert torch.equal(ref, ((acc.float() * s[:, None]) * scale + q.bias))
    assert q.gemv is not None or not cpu.available()
    assert (q.amx is not None) == cpu.amx_available()  # 256 × 384 fits AMX's tiles


@pytest.fixture(params=[True, False], ids=["vnni", "avx2"])
def vnni(request):
    """The int8 kernels on AVX-512 VNNI or on AVX2, on the same machine."""
    if not cpu.available():
        pytest.skip("no CPU kernels here")
    if request.param and not cpu.use_vnni(True):
        pytest.skip("no AVX-512 VNNI on this CPU")
    cpu.use_vnni(request.param)
    yield
    cpu.use_vnni(True)


@pytest.mark.parametrize("K,N", [(256, 384), (130, 70), (2048, 96), (3, 33)])
def test_int8_kernel_matches_torch_bit_for_bit(K, N, vnni):
    """Every row count the kernel takes (1-16: the four-block, two-block and one-block paths), K not a multiple of 4
    (zero padding) and a partial last column block, with and without bias."""
    from specdec.models.int8 import w8a8
    q, scale, bias, x = _int8_case(cpu.MAX_ROWS, K, N, K + N)
    for b in (bias, None):
        packed = cpu.PackedInt8(q, scale, b)
        for m in range(1, cpu.MAX_ROWS + 1):
            assert torch.equal(packed(x[-m:].contiguous()), w8a8(x[-m:], q, scale, b)), (m, b is None)


def test_int8_quantisation_edge_rows(vnni):
    """A zero row gives the bias, a row with NaN or ±inf gives NaN (never a silently finite row), and its neighbours
    are untouched; values halfway between integers round to even, as torch.round does."""
    from specdec.models.int8 import quantize_rows, w8a8
    q, scale, bias, x = _int8_case(5, 67, 48, 1)  # K = 67: the AVX2 path's scalar tail too
    x[1] = 0.0
    x[2, 7], x[3, 66] = float("nan"), float("-inf")
    for f in (lambda x: w8a8(x, q, scale, bias), cpu.PackedInt8(q, scale, bias)):
        y = f(x)
        assert torch.equal(y[1], bias) and bool(y[2:4].isnan().all()) and bool(y[[0, 4]].isfinite().all())
    xq, s = quantize_rows(torch.tensor([[127.0, 0.5, 1.5, -2.5, 2.4999]]))
    assert float(s[0]) == 1.0 and xq.tolist() == [[127, 0, 2, -2, 2]]


amx = pytest.mark.skipif(not cpu.amx_available(), reason="no AMX-INT8 here")


@amx
@pytest.mark.parametrize("M,K,N", [(17, 64, 48), (37, 512, 80), (177, 2048, 32), (50, 128, 16)])
def test_amx_int8_matches_torch_bit_for_bit(M, K, N):
    """Ragged rows (a partial last 16-row block, an odd number of row blocks per thread), an odd number of column
    blocks (a lone last one), one column block, both threads' shares."""
    from specdec.models.int8 import w8a8
    q, scale, bias, x = _int8_case(M, K, N, M)
    assert torch.equal(cpu.AmxInt8(q, scale, bias)(x), w8a8(x, q, scale, bias))
    assert torch.equal(cpu.AmxInt8(q, scale, None)(x), w8a8(x, q, scale, None))


def test_int8_distance_measures_the_eco_targets_departure():
    """Eco mode's reported cost: clearly above zero, and smaller for a target whose block weights are int8 values
    already (only the activations' rounding is left); one distribution per generated position and the one after."""
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
    assert 0 < near["tv_softmax"]["median"] < 0.7 * far["tv_softmax"]["median"]
