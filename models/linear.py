"""A Linear layer with the fastest *exact* CPU inference GEMM available for its weights.

GPT-SoVITS checkpoints store fp16 weights and upstream computes with them in fp32. FBGEMM's fp16-weight GEMM
(`quantized::linear_dynamic_fp16`, activations stay fp32) widens each weight to fp32 on the fly and accumulates in
fp32: the same arithmetic as an fp32 GEMM over the same values, reading half the bytes. On the 2-core CPU it runs
the 96 block matmuls of a v2 decode step in 7.0 ms instead of 22.9 ms (measured 2026-11-24). It is used only when
every weight is exactly representable in fp16 — then nothing is rounded and outputs differ from the fp32 GEMM
only by summation order — and never while autograd records (training, distillation). For up to
`cpu.MAX_ROWS` rows (decode, verification) the project's own kernel (kernels/cpu.c) does the same
arithmetic faster where it builds: FBGEMM reads the weights at about half the machine's streaming rate.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from specdec.kernels import cpu


def _fp16_gemm_available() -> bool:
    try:
        w = torch.zeros(2, 2)
        torch.ops.quantized.linear_dynamic_fp16(torch.zeros(1, 2), torch.ops.quantized.linear_prepack_fp16(w, None))
        return True
    except (AttributeError, RuntimeError):
        return False


FP16_GEMM = _fp16_gemm_available()
# the raw C++ entry point: OpOverload.__call__ adds Python dispatch checks worth ~1 ms per v2 decode step
_linear_fp16 = torch.ops.quantized.linear_dynamic_fp16.default._op if FP16_GEMM else None


def fp16_exact(w: torch.Tensor) -> bool:
    """Every value of w is an fp16 value: the fp16-weight GEMMs then compute with exactly these weights."""
    return bool(torch.equal(w.detach().half().float(), w.detach()))


def version(t: torch.Tensor) -> int:
    """The tensor's in-place modification counter; -1 for an inference tensor (made under inference_mode), which
    keeps none."""
    return -1 if t.is_inference() else t._version


class Linear(nn.Linear):
    """nn.Linear with weight storage [in, out] (one contiguous GEMM per call on CPU) and, at inference, the fp16
    GEMM when it is exact. Packed weights follow in-place weight updates (keyed on the tensor version counter)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias)
        self.weight = nn.Parameter(self.weight.detach().t().contiguous().t())
        self._packed = None  # (weight/bias versions and ptrs, (FBGEMM params, cpu pack or None) or None)
        self.allow_fp16_gemm = True  # False forces the fp32 GEMM (tests compare the two)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() and x.dtype == torch.float32 and x.is_cpu:
            packed = self._packed_fp16()
            if packed is not None:
                fbgemm, gemv = packed
                x2 = x if x.dim() == 2 and x.is_contiguous() else x.reshape(-1, x.shape[-1]).contiguous()
                y = gemv(x2) if gemv is not None and x2.shape[0] <= cpu.MAX_ROWS else _linear_fp16(x2, fbgemm)
                return y if x.dim() == 2 else y.view(*x.shape[:-1], self.out_features)
        return F.linear(x, self.weight, self.bias)

    def cpu_pack(self) -> "cpu.PackedFP16 | None":
        """The packed weights the CPU kernels use (whole decode blocks read them too), or None."""
        packed = self._packed_fp16()
        return None if packed is None else packed[1]

    def _packed_fp16(self):
        w, b = self._parameters["weight"], self._parameters["bias"]  # direct: this runs ~100 times per step
        key = (version(w), w.data_ptr(), None if b is None else (version(b), b.data_ptr()))
        if self._packed is None or self._packed[0] != key:
            exact = FP16_GEMM and self.allow_fp16_gemm and w.dtype == torch.float32 and fp16_exact(w)
            packed = None
            if exact:
                fbgemm = torch.ops.quantized.linear_prepack_fp16(w.detach().contiguous(), None if b is None
                                                                 else b.detach())
                gemv = cpu.PackedFP16(w.detach().t(), b) if cpu.available() else None
                packed = (fbgemm, gemv)
            self._packed = (key, packed)
        return self._packed[1]
