"""int8 weights for the GPT's block matmuls on CPU (lossy: for drafts, which stay exact, and the opt-in eco target).

Weight-only int8 (W8A32): one symmetric scale per output channel, weights rounded to [-127, 127], activations stay
fp32, y = (x·Q)·scale + b. For up to `cpu.MAX_ROWS` rows (decode, verification) the project's kernel
(kernels/cpu.c, `linear`) streams the int8 weights — a quarter of fp32's bytes; for more rows (prefill) its AMX
kernel (`amx_linear_int8`, x split exactly into three bf16 parts) where the CPU has AMX, else the same Q as fp32
values through torch's GEMM, scaled after it. Every path computes the same products and differs only in summation
order: a row's result does not depend on the other rows of its batch, and the int8 model is one well-defined
distribution.

History: this used FBGEMM's dynamic int8 GEMM (`quantized::linear_dynamic`, activations quantised per call).
Once the exact fp16-weight GEMV landed, that path was slower per decode row than the *exact* model (v2 shape, 2-core
Xeon, 2026-11-26: eco 51.3 vs exact 61.3 tok/s), and it needed a per-row rescaling trick to keep batch rows
independent; weight-only int8 is also the more accurate of the two. torchao 0.18 ships no CPU int8 kernels that
beat fp32 here.
"""
from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from specdec.errors import SpecdecError
from specdec.kernels import cpu
from specdec.models.gpt import GPT, Blocks
from specdec.models.linear import Linear


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [out, in] → Q [out, in] int8 and scale [out] fp32 (symmetric, per output channel)."""
    scale = (w.abs().amax(1) / 127).clamp_min(1e-12).float()
    return torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8), scale


class Int8Linear(nn.Module):
    """Inference-only replacement for a Linear: weight-only int8, fp32 in and out."""

    def __init__(self, lin: Linear):
        super().__init__()
        self.in_features, self.out_features = lin.in_features, lin.out_features
        q, scale = quantize_weight(lin.weight.detach().float())
        bias = None if lin.bias is None else lin.bias.detach().float().clone()
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)
        self.gemv = cpu.PackedInt8(q.t(), scale, bias) if cpu.available() else None
        self.amx = cpu.AmxInt8(q.t(), scale, bias) if cpu.AmxInt8.fits(self.in_features, self.out_features) else None
        # many rows without AMX: torch's GEMM over Q's values as fp32
        self.register_buffer("q_fp32", q.float() if self.amx is None else None, persistent=False)

    def cpu_pack(self) -> "cpu.PackedInt8 | None":
        return self.gemv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)  # [n, in]
        if self.gemv is not None and x2.shape[0] <= cpu.MAX_ROWS:
            y = self.gemv(x2.contiguous())
        elif self.amx is not None:
            y = self.amx(x2.contiguous())
        else:
            y = F.linear(x2, self.q_fp32).mul_(self.scale)
            y = y if self.bias is None else y.add_(self.bias)
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
