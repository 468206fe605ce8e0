"""int8 weights for the GPT's block matmuls on CPU (lossy: for drafts, which stay exact, and the opt-in eco target).

Kernel: FBGEMM's dynamic int8 GEMM in torch core (`quantized::linear_dynamic`): int8 weights, one symmetric scale
per output channel, packed once; activations quantised to 7-bit unsigned on the fly (`reduce_range`, so the AVX2
u8·s8 pair sums cannot saturate int16). bench/int8_costs.py times it against fp32, the exact fp16-weight GEMM and
torchao: on the shared 2-core Xeon (2026-11-26) a v2 target pass took 0.6× (n=1) and 0.75× (n=5 rows) the time of
the fp16-weight path. torchao 0.18, where torch's quantisation work now lives, ships no CPU kernels: its int8
configs run eagerly through `torch._int_mm` or dequantisation and measured slower than plain fp32, so it is not
used (and not a dependency). torch marks its quantized tensor types deprecated; if a future build drops the op,
`INT8_GEMM` is False and int8 raises a SpecdecError.

FBGEMM picks one activation scale for the whole input; mixing the rows of several sequences would make one
sequence's result depend on the others in its batch (and on k). Each row is therefore divided by its own max |x|
and a fixed anchor row [-1, 1, 0, …] pins the range to [-1, 1]: every row is quantised on its own, so a batch
gives each sequence what it gets alone and the int8 model is one well-defined distribution. The row scaling costs
≈ 7 small ops per call (≈ 40 % over one scale per call at n = 1 in the same bench).
"""
from __future__ import annotations

import copy
import dataclasses
import warnings

import torch
from torch import nn

from specdec.errors import SpecdecError
from specdec.models.gpt import GPT
from specdec.models.linear import Linear


def _pack(w: torch.Tensor, b: torch.Tensor | None):
    """w [out, in] fp32 → FBGEMM packed int8 weights (symmetric per-channel scales), b kept outside the GEMM."""
    scale = (w.abs().amax(1) / 127).clamp_min(1e-12).double()
    with warnings.catch_warnings():  # torch flags its quantized tensor types as deprecated; the op is what we need
        warnings.simplefilter("ignore")
        qw = torch.quantize_per_channel(w, scale, torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
    return torch.ops.quantized.linear_prepack(qw, b)


def _int8_gemm_available() -> bool:
    try:
        torch.ops.quantized.linear_dynamic(torch.zeros(1, 2), _pack(torch.ones(2, 2), None), True)
        return True
    except (AttributeError, RuntimeError):
        return False


INT8_GEMM = _int8_gemm_available()


class Int8Linear(nn.Module):
    """Inference-only replacement for a Linear: int8 weights packed at construction, fp32 in and out."""

    def __init__(self, lin: Linear):
        super().__init__()
        if not INT8_GEMM:
            raise SpecdecError("int8 needs FBGEMM's quantized::linear_dynamic, which this torch build lacks")
        self.in_features, self.out_features = lin.in_features, lin.out_features
        self.packed = _pack(lin.weight.detach().float().contiguous(), None)
        self.register_buffer("bias", None if lin.bias is None else lin.bias.detach().float().clone())
        anchor = torch.zeros(1, lin.in_features)
        anchor[0, :2] = torch.tensor([-1.0, 1.0])
        self.register_buffer("anchor", anchor, persistent=False)  # [1, in]: fixes the quantisation range

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)  # [n, in]
        s = x2.abs().amax(1, keepdim=True).clamp_min_(1e-30)  # [n, 1] (cheaper than vector_norm(inf) here)
        y = torch.ops.quantized.linear_dynamic(torch.cat([x2 / s, self.anchor]), self.packed, True)[:-1].mul_(s)
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
    q = copy.copy(gpt)  # shallow: the module dicts are replaced below, never shared
    q._parameters, q._buffers, q._modules = dict(gpt._parameters), dict(gpt._buffers), dict(gpt._modules)
    q.cfg = dataclasses.replace(gpt.cfg, n_layer=n)
    q.layers = nn.ModuleList(_quantized_block(b) for b in gpt.layers[:n])
    q.quantization = "int8"
    return q.eval()


def _quantized_block(block: nn.Module) -> nn.Module:
    q = copy.copy(block)
    q._modules = {name: Int8Linear(m) if isinstance(m, Linear) else m for name, m in block._modules.items()}
    return q
