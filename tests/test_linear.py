"""The fp16-weight GEMM is used exactly when it is exact, and then matches the fp32 GEMM to rounding."""
import torch

from specdec.models.linear import FP16_GEMM, Linear


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
        assert lin._packed[1] is not None  # the fp16 path ran
        lin.allow_fp16_gemm = False
        lin._packed = None
        ref = lin(x)
        assert lin._packed[1] is None
    torch.testing.assert_close(fast, ref, atol=2e-5, rtol=1e-5)


def test_weights_that_fp16_would_round_keep_the_fp32_gemm():
    lin, x = _pair(False)
    with torch.inference_mode():
        y = lin(x)
    assert lin._packed[1] is None
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


def test_training_uses_the_autograd_path():
    lin, x = _pair(True)
    y = lin(x.requires_grad_())
    y.sum().backward()
    assert x.grad is not None and lin.weight.grad is not None
