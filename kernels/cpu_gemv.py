"""Linears for few rows on x86 CPUs (kernels/fp16_gemv.c), built on first use: the exact fp16-weight one and the
weight-only int8 one (lossy; specdec.models.int8).

The C source is compiled once per machine with the system C compiler (`$CC`, else `cc`) into
`$XDG_CACHE_HOME/specdec` (default ~/.cache/specdec), named by the hash of source and flags, and loaded with ctypes
(which releases the GIL for the call). Where that cannot happen — not Linux x86-64, no AVX2/F16C/FMA, no compiler,
or `SPECDEC_CPU_GEMV=0` — `available()` is False and callers keep torch's GEMMs (FBGEMM's fp16 GEMM, exact too, for
the fp16 weights; an fp32 GEMM over the same integers for int8).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import sys

import torch

MAX_ROWS = 8  # from 9-16 rows on FBGEMM's blocked GEMM is as fast or faster (2-core Xeon, 2026-11-26)
_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fp16_gemv.c")
_FLAGS = ["-O3", "-mavx2", "-mf16c", "-mfma", "-fopenmp", "-shared", "-fPIC"]
_NB = 32  # columns per packed block, as in the C source


def _cpu_supported() -> bool:
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return {"avx2", "f16c", "fma"} <= set(flags)


@functools.lru_cache(maxsize=1)
def _lib():
    if os.environ.get("SPECDEC_CPU_GEMV", "1") == "0" or not _cpu_supported():
        return None
    with open(_SRC, "rb") as f:
        key = hashlib.sha256(f.read() + " ".join(_FLAGS).encode()).hexdigest()[:16]
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "specdec")
    so = os.path.join(cache, f"fp16_gemv-{key}.so")
    if not os.path.exists(so):
        tmp = f"{so}.{os.getpid()}.tmp"
        try:
            os.makedirs(cache, exist_ok=True)
            subprocess.run([os.environ.get("CC", "cc"), *_FLAGS, "-o", tmp, _SRC], check=True, capture_output=True,
                           timeout=120)
            os.replace(tmp, so)  # atomic: a concurrent builder or a killed one never leaves half a library
        except (OSError, subprocess.SubprocessError):
            if os.path.exists(tmp):
                os.remove(tmp)
            return None
    lib = ctypes.CDLL(so)
    p, i = ctypes.c_void_p, ctypes.c_int64
    lib.pack_blocks.argtypes, lib.pack_blocks.restype = [p, i, i, i, p], None
    for fn in (lib.fp16_linear, lib.int8_linear):
        fn.argtypes, fn.restype = [p, i, i, p, i, p, p, p], None
    return lib


def available() -> bool:
    return _lib() is not None


class _Packed:
    """Weights [K, N] in the kernel's block layout, one scale per column or None, bias [N] or None."""

    kind: str  # "fp16" | "int8"

    def __init__(self, w: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None):
        lib = _lib()
        self.K, self.N = w.shape
        w = w.detach().contiguous()
        self.data = torch.empty(-(-self.N // _NB) * self.K * _NB, dtype=w.dtype)
        lib.pack_blocks(w.data_ptr(), self.K, self.N, w.element_size(), self.data.data_ptr())
        self.scale = None if scale is None else scale.detach().float().contiguous()
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self._fn = getattr(lib, f"{self.kind}_linear")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [M, K] fp32 contiguous → [M, N]."""
        y = torch.empty(x.shape[0], self.N)
        self._fn(x.data_ptr(), x.shape[0], self.K, self.data.data_ptr(), self.N,
                 None if self.scale is None else self.scale.data_ptr(),
                 None if self.bias is None else self.bias.data_ptr(), y.data_ptr())
        return y


class PackedFP16(_Packed):
    """W [K, N] fp32 whose values are exactly representable in fp16: exact."""

    kind = "fp16"

    def __init__(self, w: torch.Tensor, bias: torch.Tensor | None):
        super().__init__(w.detach().to(torch.float16), None, bias)


class PackedInt8(_Packed):
    """Q [K, N] int8 with one scale per column [N]: y = (x·Q)·scale + bias."""

    kind = "int8"
