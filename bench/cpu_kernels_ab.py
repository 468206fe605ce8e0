"""Whole autoregressive generations at a real shape with the project's CPU kernels (kernels/cpu.c) on and off,
interleaved in one process: whole decode blocks in one C call, the per-op path with only the GEMV kernel, and
torch alone (a copy of the model packed as where the kernels do not build: FBGEMM's fp16 GEMM for decode rows);
checks that all three give the same tokens. The prefill takes oneDNN in all three.

    python bench/cpu_kernels_ab.py [--shape v2] [--tokens 150] [--repeats 7]

Writes bench/results/cpu_kernels_ab_<shape>.json.
"""
import argparse
import copy
import os
from unittest import mock

import torch
from rich.console import Console

import specdec
from specdec.bench import as_dict, fixed_request, machine, random_target, run_interleaved, write_json
from specdec.kernels import cpu

ap = argparse.ArgumentParser()
ap.add_argument("--shape", default="v2")
ap.add_argument("--tokens", type=int, default=150)
ap.add_argument("--repeats", type=int, default=7)
args = ap.parse_args()
if not cpu.available():
    raise SystemExit("the CPU kernels are not available here (no AVX2/F16C CPU or no C compiler)")
gpt = random_target(args.shape)
phones, prompt = fixed_request(phoneme_vocab_size=gpt.cfg.phoneme_vocab_size)
whole_blocks = gpt.layers._cpu_decode
torch_gpt = copy.deepcopy(gpt)
with mock.patch.object(cpu, "available", lambda: False):  # its Linears pack for torch alone, on first use
    specdec.generate(torch_gpt, phones, prompt, top_k=15, max_new_tokens=2, seed=0)
tokens = {}


def contender(name: str, model, blocks: bool):
    def run() -> int:
        gpt.layers._cpu_decode = whole_blocks if blocks else lambda *a: None  # None: the per-op path
        tokens[name] = specdec.generate(model, phones, prompt, top_k=15, max_new_tokens=args.tokens, seed=0).tokens
        return len(tokens[name])
    return run


names = ("whole-block kernel", "GEMV kernel, per op", "torch (FBGEMM fp16)")
console = Console()
with console.status("benchmarking") as status:
    t = run_interleaved({names[0]: contender(names[0], gpt, True), names[1]: contender(names[1], gpt, False),
                         names[2]: contender(names[2], torch_gpt, False)}, args.repeats, 1,
                        lambda m: status.update(m))
same = all(torch.equal(tokens[n], tokens[names[0]]) for n in names)
tps = {n: t[n].summary()["tokens_per_s_median"] for n in names}
res = {"machine": machine(), "shape": args.shape, "n_tokens": args.tokens, "same_tokens": same,
       "results": [as_dict(x) for x in t.values()],
       "speedup_vs_torch": {n: tps[n] / tps[names[2]] for n in names[:2]}}
for r in res["results"]:
    console.print(f"{r['name']:20s} {r['tokens_per_s_median']:6.1f} tok/s (IQR {r['tokens_per_s_q1']:.1f}–"
                  f"{r['tokens_per_s_q3']:.1f}) = {tps[r['name']] / tps[names[2]]:.2f}× torch")
console.print(f"same tokens: {same}")
write_json(os.path.join(os.path.dirname(__file__), "results", f"cpu_kernels_ab_{args.shape}.json"), res)
