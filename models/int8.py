"""int8 weights for the GPT's block matmuls on CPU (lossy: for drafts, which stay exact, and the opt-in eco target).

W8A8: one symmetric scale per output channel, weights rounded to [-127, 127]; each activation row quantised the
same way with its own scale s (`quantize_rows`); y = ((x_q·Q as an exact int32 sum) · s) · scale + b, each float
operation rounded on its own. For up to `cpu.MAX_ROWS` rows (decode, verification) the project's kernel
(kernels/cpu.c, `linear`) streams the int8 weights — a quarter of fp32's bytes — and with AVX-512 VNNI an extra row
costs a few `vpdpbusd` instead of widening every weight to fp32 (AVX2 CPUs: `vpmaddwd`, the same bits); for more rows
(prefill) its AMX-INT8 kernel where the CPU has AMX; elsewhere torch's int8 GEMM (`torch._int_mm`). The sums are
exact integers and the rest is the same float operations in the same order, so every path gives bit-identical rows:
a row's result does not depend on its batch or on which path ran it, and the int8 model is one well-defined
distribution.

History: FBGEMM's dynamic int8 GEMM (`quantized::linear_dynamic`) came first; it was slower per decode row than the
exact fp16-weight kernel (v2 shape, 2026-11-26: eco 51.3 vs exact 61.3 tok/s) and shared one activation scale per
call across rows. Weight-only int8 (W8A32) replaced it; its extra verification rows cost ~0.75 ms each at v2
(widening int8 to fp32 is compute-bound), which W8A8 removes at about twice W8A32's distance from fp32 (demo voice:
TV median 0.0013 vs 0.001, p90 0.011 vs 0.005; README "int8 on CPU"). torchao 0.18 ships no CPU int8 kernels that
beat fp32 here.
"""
from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from specdec.errors import SpecdecError
from specdec.kernels import cpu
from specdec.models.gpt import GPT, Blocks
from specdec.models.linear import Linear


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [out, in] → Q [out, in] int8 and scale [out] fp32 (symmetric, per output channel)."""
    scale = (w.abs().amax(1) / 127).clamp_min(1e-12).float()
    return torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8), scale


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [n, K] fp32 → x_q [n, K] int8 and s [n]: s = max|x|/127 (1 for a zero row, NaN for a non-finite one),
    x_q = round-half-even(x / s) clamped to [-127, 127] — what kernels/cpu.c's `quantize_row` computes."""
    s = x.abs().amax(1) / 127
    s = torch.where(s == 0, 1.0, torch.where(s.isfinite(), s, float("nan")))
    xq = torch.round(x / s[:, None]).clamp_(-127, 127).nan_to_num_(0.0)
    return xq.to(torch.int8), s


def w8a8(x: torch.Tensor, qt: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The int8 linear in torch: x [n, K] fp32, Q^T [K, N] int8 → ((x_q·Q^T) · s) · scale + bias [n, N], bit for
    bit what the C kernels compute."""
    xq, s = quantize_rows(x)
    acc = torch._int_mm(xq, qt) if x.is_cpu else (xq.double() @ qt.double()).int()  # exact integers either way
    y = acc.float().mul_(s[:, None]).mul_(scale)
    return y if bias is None else y.add_(bias)


class Int8Linear(nn.Module):
    """Inference-only replacement for a Linear: W8A8 int8, fp32 in and out."""

    def __init__(self, lin: Linear):
        super().__init__()
        self.in_features, self.out_features = lin.in_features, lin.out_features
        q, scale = quantize_weight(lin.weight.detach().float())
        bias = None if lin.bias is None else lin.bias.detach().float().clone()
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)
        self.gemv = cpu.PackedInt8(q.t(), scale, bias) if cpu.available() else None
        self.amx = cpu.AmxInt8(q.t(), scale, bias) if cpu.AmxInt8.fits(self.in_features, self.out_features) else None
        # the rows neither kernel takes: torch's int8 GEMM
        self.register_buffer("qt", q.t().contiguous() if self.amx is None or self.gemv is None else None,
                             persistent=False)

    def cpu_pack(self) -> "cpu.PackedInt8 | None":
        return self.gemv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)  # [n, in]
        if self.gemv is not None and x2.shape[0] <= cpu.MAX_ROWS:
            y = self.gemv(x2.contiguous())
        elif self.amx is not None and x2.shape[0] > cpu.MAX_ROWS:
            y = self.amx(x2.contiguous())
        else:
            y = w8a8(x2.float(), self.qt, self.scale, self.bias)
        return y.view(*x.shape[:-1], self.out_features)


def quantize_gpt(gpt: GPT, n_layer: int | None = None) -> GPT:
    """A copy of `gpt` (of its first `n_layer` blocks + head, when given) whose 4 matmuls per block run in int8
    (`Int8Linear`). LOSSY: its next-token distribution differs from `gpt`'s (bench/int8_costs.py measures by how
    much); as a draft it costs no exactness. Embeddings, LayerNorms, the BERT projection and the head are shared
    with `gpt`, not copied; the original stays usable."""
    if gpt.quantization is not None:
        raise SpecdecError(f"this GPT is already quantised ({gpt.quantization}): an int8 draft of an int8 (eco) "
                           "target would be the target itself; use no draft or a smaller one")
    n = gpt.cfg.n_layer if n_layer is None else n_layer
    if not 1 <= n <= gpt.cfg.n_layer:
        raise SpecdecError(f"int8:{n} needs 1 <= N <= {gpt.cfg.n_layer} (the target's layers)")
    q = _with_int8_blocks(gpt, gpt.layers[:n])
    q.cfg = dataclasses.replace(gpt.cfg, n_layer=n)
    q.quantization = "int8"
    return q


def quantize_eagle(draft):
    """A copy of an EAGLE draft (specdec.models.eagle.EagleDraft) whose block matmuls run in int8; its fc and the
    target's head and embeddings stay as they are. As a draft it costs no exactness."""
    return _with_int8_blocks(draft, draft.layers)


def quantize_draft(draft):
    """The int8 copy of a draft model: `quantize_gpt` for a GPT draft, `quantize_eagle` for an EAGLE one."""
    return quantize_gpt(draft) if isinstance(draft, GPT) else quantize_eagle(draft)


def _with_int8_blocks(model: nn.Module, blocks) -> nn.Module:
    """A shallow copy of `model` (its own module dicts, everything else shared) whose `layers` are int8 copies of
    `blocks`."""
    q = copy.copy(model)
    q._parameters, q._buffers, q._modules = dict(model._parameters), dict(model._buffers), dict(model._modules)
    q.layers = Blocks(_quantized_block(b) for b in blocks)
    return q.eval()


def _quantized_block(block: nn.Module) -> nn.Module:
    q = copy.copy(block)
    q._modules = {name: Int8Linear(m) if isinstance(m, Linear) else m for name, m in block._modules.items()}
    return q
