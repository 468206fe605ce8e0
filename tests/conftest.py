import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # the same op sequence on the same thread count gives the same rounding; tests compare runs within a process
    torch.manual_seed(0)
    yield


@pytest.fixture(params=[True, False], ids=["avx512", "avx2"])
def avx512(request):
    """The CPU kernels' AVX-512 paths (fp16 rows, prefill attention, int8 on VNNI) or their AVX2 ones, on the same
    machine."""
    from specdec.kernels import cpu
    if request.param and not cpu.use_avx512(True):
        pytest.skip("no AVX-512 on this CPU")
    cpu.use_avx512(request.param)
    cpu.use_vnni(request.param)
    yield
    cpu.use_avx512(True)
    cpu.use_vnni(True)
