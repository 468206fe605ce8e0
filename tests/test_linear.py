"""The fp16-weight GEMMs are used exactly when they are exact, and then match the fp32 GEMM to rounding; many rows
take oneDNN's fp32 GEMM, whose rows do not depend on how many share a call."""
import torch

from specdec.models.linear import FP16_GEMM, ONEDNN_GEMM, Linear


def _pair(fp16_exact: bool):
    torch.manual_seed(0)
    lin = Linear(512, 1536)
    if fp16_exact:
        with torch.no_grad():
            lin.weight.copy_(lin.weight.half().float())
    return lin, torch.randn(5, 512)


def test_fp16_gemm_matches_fp32_on_fp16_exact_weights():
    assert FP16_GEMM, "FBGEMM's fp16 GEMM is missing from this torch build"
    lin, x = _pair(True)
    with torch.inference_mode():
        fast = lin(x)
        assert lin._packs().few is not None  # the fp16 path ran
        lin.allow_fp16_gemm = False
        lin._packed = None
        ref = lin(x)
        assert lin._packs().few is None
    torch.testing.assert_close(fast, ref, atol=2e-5, rtol=1e-5)


def test_weights_that_fp16_would_round_keep_the_fp32_gemm():
    lin, x = _pair(False)
    with torch.inference_mode():
        y = lin(x)
        assert lin._packs().few is None
    torch.testing.assert_close(y, x @ lin.weight.t() + lin.bias)


def test_packed_weights_follow_in_place_updates():
    lin, x = _pair(True)
    with torch.inference_mode():
        before = lin(x)
    with torch.no_grad():
        lin.weight.mul_(2.0)  # still fp16-exact: must repack, not reuse the old packed weights
    with torch.inference_mode():
        after = lin(x)
    torch.testing.assert_close(after - lin.bias, 2 * (before - lin.bias), atol=1e-4, rtol=1e-5)


def test_packed_weights_follow_a_fused_optimiser_step():
    """AdamW(fused=True) updates weights without moving their version counter: the packs must go with the switch
    back to eval mode, for few rows (packed as fp16 before the step) and many (oneDNN's blocked copy)."""
    lin, x = _pair(True)
    many = torch.randn(300, 512)
    lin.eval()
    with torch.no_grad():
        lin(x), lin(many)  # packed
    lin.train()
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-2, fused=True)
    lin(many).square().mean().backward()
    opt.step()
    lin.eval()
    with torch.no_grad():
        for rows in (x, many):
            torch.testing.assert_close(lin(rows), rows @ lin.weight.t() + lin.bias, atol=2e-5, rtol=1e-5)


def test_many_rows_take_onednn_exactly_and_each_row_alone():
    """A prefill's rows (> cpu.MAX_ROWS) take oneDNN's fp32 GEMM over the blocked weights: as close to a float64 GEMM
    as torch's fp32 one, and every row's bits independent of the rows beside it — a batched prefill gives each
    sequence what its prefill alone would."""
    from specdec.kernels import cpu
    assert ONEDNN_GEMM, "oneDNN's linear is missing from this torch build"
    torch.manual_seed(2)
    for K, N, fp16 in [(512, 1536, True), (2048, 512, True), (512, 1025, False)]:
        lin = Linear(K, N)
        if fp16:
            with torch.no_grad():
                lin.weight.copy_(lin.weight.half().float())
        x = torch.randn(400, K)
        with torch.inference_mode():
            y = lin(x)
            ref = torch.nn.functional.linear(x.double(), lin.weight.double(), lin.bias.double())
            bound = (x.abs().double() @ lin.weight.abs().double().t()) * 2e-6  # fp32 rounding, K terms
            assert ((y.double() - ref).abs() <= bound).all()
            for a, m in [(0, cpu.MAX_ROWS + 1), (7, 70), (100, 220), (3, 397)]:
                assert torch.equal(lin(x[a:a + m]), y[a:a + m]), (K, N, m)


def test_copies_and_pickles_rebuild_their_packed_weights():
    import copy
    lin, x = _pair(True)
    with torch.inference_mode():
        y = lin(x)
        for other in (copy.deepcopy(lin), torch.load(_saved(lin), weights_only=False)):
            assert other._packed is None
            torch.testing.assert_close(other(x), y, rtol=0, atol=0)
            assert other._packs().few is not lin._packs().few


def _saved(module):
    import io
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    return buf


def test_training_uses_the_autograd_path():
    lin, x = _pair(True)
    y = lin(x.requires_grad_())
    y.sum().backward()
    assert x.grad is not None and lin.weight.grad is not None


def _fp16_exact(*shape, scale=1.0):
    return (scale * torch.randn(*shape)).half().float()


def test_cpu_gemv_kernel_matches_float64_reference_on_ragged_shapes():
    """kernels/cpu.c (`linear`) against a float64 GEMM: every row count it serves, widths that are not a multiple of
    its 32-column blocks (the 1025-way head) or of the one-row kernel's 4 blocks, with and without bias, with the
    AVX-512 and the AVX2 rows kernels; then both dispatch sides of Linear."""
    import pytest

    from specdec.kernels import cpu
    if not cpu.available():
        pytest.skip("no AVX2/F16C CPU or no C compiler: Linear keeps FBGEMM")
    torch.manual_seed(1)
    try:
        for avx512 in {cpu.use_avx512(True), False}:  # the AVX-512 rows kernels where the CPU has them, AVX2 always
            cpu.use_avx512(avx512)
            for K, N in [(512, 1536), (2048, 512), (512, 1025), (256, 129), (64, 7), (128, 100)]:
                w, b = _fp16_exact(K, N, scale=K ** -0.5), _fp16_exact(N)
                for bias in (b, None):
                    packed = cpu.PackedFP16(w, bias)
                    for M in range(1, cpu.MAX_ROWS + 1):
                        x = torch.randn(M, K)
                        ref = x.double() @ w.double() + (0 if bias is None else bias.double())
                        torch.testing.assert_close(packed(x).double(), ref, atol=1e-5 * K ** 0.5, rtol=1e-5)
    finally:
        cpu.use_avx512(True)
    lin = Linear(512, 1025)
    with torch.inference_mode():
        lin.weight.copy_(lin.weight.half().float())
        lin.bias.copy_(lin.bias.half().float())
        for M in (1, cpu.MAX_ROWS, cpu.MAX_ROWS + 1, 40):  # kernel, kernel, oneDNN, oneDNN
            x = torch.randn(M, 512)
            torch.testing.assert_close(lin(x), x @ lin.weight.t() + lin.bias, atol=2e-5, rtol=1e-5)
        assert isinstance(lin._packs().few, cpu.PackedFP16)
