"""The exact prefill: its GEMMs — oneDNN's fp32 GEMM over blocked weights (what specdec takes for many rows) against
FBGEMM's fp16-weight GEMM and torch's fp32 GEMM, per matmul at a real shape's prefill — then whole prefills (time to
first token) as specdec runs them, with FBGEMM's GEMMs instead, and with torch's SDPA instead of the C attention
kernel (kernels/cpu.c `prefix_attention`), interleaved in one process; checks that all give the same first token.

    python bench/prefill_ab.py [--shape v2] [--phones 70] [--prompt 150] [--repeats 15]

Writes bench/results/prefill_ab_<shape>.json.
"""
import argparse
import contextlib
import copy
import os
import statistics
from unittest import mock

import torch
import torch.nn.functional as F
from rich.console import Console

from specdec.bench import _one_unit, as_dict, fixed_request, machine, random_target, run_interleaved, write_json
from specdec.engine import Engine, Request
from specdec.kernels import attention
from specdec.models import linear
from specdec.sampling import SamplingParams

ap = argparse.ArgumentParser()
ap.add_argument("--shape", default="v2")
ap.add_argument("--phones", type=int, default=70)
ap.add_argument("--prompt", type=int, default=150)
ap.add_argument("--repeats", type=int, default=15)
args = ap.parse_args()
if not (linear.ONEDNN_GEMM and linear.FP16_GEMM):
    raise SystemExit("this torch build lacks oneDNN's linear or FBGEMM's fp16 GEMM")
console = Console()
gpt = random_target(args.shape)
M = args.phones + args.prompt


matmuls = []
block = gpt.layers[0]
for name, lin in (("qkv", block.qkv), ("out", block.out), ("ffn_in", block.ffn_in), ("ffn_out", block.ffn_out)):
    w, b = lin.weight.detach(), lin.bias.detach()
    x = torch.randn(M, w.shape[1])
    fbgemm = torch.ops.quantized.linear_prepack_fp16(w.contiguous(), b)
    blocked = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), 256)
    ways = {"oneDNN fp32 (blocked)": lambda: torch.ops.mkldnn._linear_pointwise(x, blocked, b, "none", [], ""),
            "FBGEMM fp16 weights": lambda: torch.ops.quantized.linear_dynamic_fp16(x, fbgemm),
            "torch fp32": lambda: F.linear(x, w, b)}
    t = run_interleaved({way: _one_unit(f) for way, f in ways.items()}, args.repeats, 3)
    macs = M * w.shape[0] * w.shape[1]
    row = {"matmul": name, "M": M, "K": w.shape[1], "N": w.shape[0],
           **{way: macs / statistics.median(t[way].seconds) / 1e9 for way in ways}}
    matmuls.append(row)
    console.print(f"{name:8s} [{M}×{w.shape[1]}]·[{w.shape[1]}×{w.shape[0]}]: "
                  + ", ".join(f"{way} {row[way]:.0f}" for way in ways) + " GMAC/s")

phones, prompt = fixed_request(args.phones, args.prompt, gpt.cfg.phoneme_vocab_size)
fbgemm_gpt = copy.deepcopy(gpt)
first = {}


def prefill(name: str, model, sdpa: bool = False):
    engine = Engine(model)
    no_kernel = mock.patch.object(attention, "_cpu_prefix_kernel", lambda q, k: False)

    def run() -> int:
        with no_kernel if sdpa else contextlib.nullcontext():
            out = engine.generate([Request(phones, prompt, params=SamplingParams(seed=0, max_new_tokens=1))])[0]
        first[name] = out.tokens
        return 1
    return run


names = ("specdec (oneDNN GEMMs, C attention)", "FBGEMM GEMMs", "SDPA attention")
contenders = {names[0]: prefill(names[0], gpt), names[1]: prefill(names[1], fbgemm_gpt),
              names[2]: prefill(names[2], gpt, sdpa=True)}
with mock.patch.object(linear, "ONEDNN_GEMM", False):  # fbgemm_gpt's Linears pack without oneDNN, on first use
    contenders[names[1]]()
with console.status("whole prefills") as status:
    t = run_interleaved(contenders, args.repeats, 1, lambda m: status.update(m))
ms = {n: 1e3 * statistics.median(x.seconds) for n, x in t.items()}
same = all(torch.equal(first[n], first[names[0]]) for n in names)
for n in names:
    console.print(f"prefill of {M} rows (+ its sampling), {n}: {ms[n]:.1f} ms ({ms[n] / ms[names[0]]:.2f}×)")
console.print(f"same first token: {same}")
write_json(os.path.join(os.path.dirname(__file__), "results", f"prefill_ab_{args.shape}.json"),
           {"machine": machine(), "shape": args.shape, "rows": M, "matmuls_gmac_per_s": matmuls,
            "prefill_ms_median": ms, "prefill": [as_dict(x) for x in t.values()], "same_first_token": same})
