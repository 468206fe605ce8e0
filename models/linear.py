"""A Linear layer with the fastest *exact* CPU inference GEMM available for its weights.

GPT-SoVITS checkpoints store fp16 weights and upstream computes with them in fp32. Decode and verification passes
(up to `cpu.MAX_ROWS` rows) read every weight for few rows, so they are bound by memory: there the project's own
kernel (kernels/cpu.c) widens fp16 weights to fp32 on the fly and accumulates in fp32 — the same arithmetic as an
fp32 GEMM over the same values, reading half the bytes — and where it does not build, FBGEMM's fp16-weight GEMM
(`quantized::linear_dynamic_fp16`) does the same (the 96 block matmuls of a v2 decode step: 7.0 ms against 22.9 in
fp32, 2026-11-24). Both are used only when every weight is exactly representable in fp16: then nothing is rounded and
outputs differ from the fp32 GEMM only by summation order. Many rows (a prefill) are bound by arithmetic instead:
there oneDNN's fp32 GEMM over weights reordered once into its blocked layout is the fastest exact one (a v2 prefill
of 220 rows: 3-20 % faster per matmul than FBGEMM's fp16 GEMM, ~10 % off the whole prefill; bench/prefill_ab.py,
2026-11-27). Autograd (training, distillation) always takes F.linear.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from specdec.kernels import cpu


def _available(op) -> bool:
    try:
        op()
        return True
    except (AttributeError, RuntimeError):
        return False


FP16_GEMM = _available(lambda: torch.ops.quantized.linear_dynamic_fp16(
    torch.zeros(1, 2), torch.ops.quantized.linear_prepack_fp16(torch.zeros(2, 2), None)))
ONEDNN_GEMM = _available(lambda: torch.ops.mkldnn._linear_pointwise(
    torch.zeros(1, 2), torch.ops.mkldnn._reorder_linear_weight(torch.zeros(2, 2), 1), None, "none", [], ""))
# the raw C++ entry points: OpOverload.__call__ adds Python dispatch checks worth ~1 ms per v2 decode step
_linear_fp16 = torch.ops.quantized.linear_dynamic_fp16.default._op if FP16_GEMM else None
_linear_onednn = torch.ops.mkldnn._linear_pointwise.default._op if ONEDNN_GEMM else None


def fp16_exact(w: torch.Tensor) -> bool:
    """Every value of w is an fp16 value: the fp16-weight GEMMs then compute with exactly these weights."""
    return bool(torch.equal(w.detach().half().float(), w.detach()))


def version(t: torch.Tensor) -> int:
    """The tensor's in-place modification counter; -1 for an inference tensor (made under inference_mode), which
    keeps none."""
    return -1 if t.is_inference() else t._version


class _Packs:
    """One Linear's weights packed for each inference GEMM it may take: `few` rows (≤ cpu.MAX_ROWS) and `many`,
    each a callable x [M, K] → [M, N] or None (then F.linear)."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor | None, fp16: bool):
        w, b = w.detach(), None if b is None else b.detach()
        gemv = cpu.PackedFP16(w.t(), b) if fp16 and cpu.available() else None
        fbgemm = None
        if fp16 and (gemv is None or not ONEDNN_GEMM):
            packed = torch.ops.quantized.linear_prepack_fp16(w.contiguous(), b)

            def fbgemm(x):
                return _linear_fp16(x, packed)
        self.few, self.many = gemv or fbgemm, fbgemm
        if ONEDNN_GEMM:
            blocked = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), 256)  # 256: a prefill's rows, a hint

            def onednn(x):
                return _linear_onednn(x, blocked, b, "none", [], "")
            self.many = onednn


class Linear(nn.Linear):
    """nn.Linear with weight storage [in, out] (one contiguous GEMM per call on CPU) and, at inference, the fastest
    exact GEMM for the row count (module docstring). Packed weights follow in-place weight updates (keyed on the
    tensor version counter) and are dropped when the module changes between train and eval mode: fused optimisers
    (`AdamW(fused=True)`) update weights without moving the version counter."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias)
        self.weight = nn.Parameter(self.weight.detach().t().contiguous().t())
        self._packed = None  # (weight/bias versions and ptrs, _Packs)
        self.allow_fp16_gemm = True  # False keeps the fp16-weight GEMMs off (tests and the bench compare)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() and x.dtype == torch.float32 and x.is_cpu:
            x2 = x if x.dim() == 2 and x.is_contiguous() else x.reshape(-1, x.shape[-1]).contiguous()
            packs = self._packs()
            gemm = packs.few if x2.shape[0] <= cpu.MAX_ROWS else packs.many
            if gemm is not None:
                y = gemm(x2)
                return y if x.dim() == 2 else y.view(*x.shape[:-1], self.out_features)
        return F.linear(x, self.weight, self.bias)

    def train(self, mode: bool = True):
        if mode != self.training:
            self._packed = None
        return super().train(mode)

    def __getstate__(self):
        # packed weights are a cache over this module's own tensors: copies and pickles rebuild theirs
        return {**super().__getstate__(), "_packed": None}

    def cpu_pack(self) -> "cpu.PackedFP16 | None":
        """The packed fp16 weights the CPU kernels use (whole decode blocks read them too), or None."""
        few = self._packs().few
        return few if isinstance(few, cpu.PackedFP16) else None

    def _packs(self) -> _Packs:
        w, b = self._parameters["weight"], self._parameters["bias"]  # direct: this runs ~100 times per step
        key = (version(w), w.data_ptr(), None if b is None else (version(b), b.data_ptr()))
        if self._packed is None or self._packed[0] != key:
            fp16 = FP16_GEMM and self.allow_fp16_gemm and w.dtype == torch.float32 and fp16_exact(w)
            self._packed = (key, _Packs(w, b, fp16))
        return self._packed[1]
