"""Whole autoregressive generations at a real shape with the project's fp16-weight GEMV (kernels/fp16_gemv.c) on and
off (FBGEMM's fp16 GEMM), interleaved in one process; checks that both give the same tokens.

    python bench/cpu_gemv_ab.py [--shape v2] [--tokens 150] [--repeats 7]

Writes bench/results/cpu_gemv_ab_<shape>.json.
"""
import argparse
import os

import torch
from rich.console import Console

import specdec
from specdec.bench import as_dict, fixed_request, machine, random_target, run_interleaved, write_json
from specdec.kernels import cpu_gemv

ap = argparse.ArgumentParser()
ap.add_argument("--shape", default="v2")
ap.add_argument("--tokens", type=int, default=150)
ap.add_argument("--repeats", type=int, default=7)
args = ap.parse_args()
if not cpu_gemv.available():
    raise SystemExit("the GEMV kernel is not available here (no AVX2/F16C CPU or no C compiler)")
gpt = random_target(args.shape)
phones, prompt = fixed_request(phoneme_vocab_size=gpt.cfg.phoneme_vocab_size)
tokens = {}


def contender(max_rows: int, name: str):
    def run() -> int:
        cpu_gemv.MAX_ROWS = max_rows  # 0: every call takes FBGEMM
        tokens[name] = specdec.generate(gpt, phones, prompt, top_k=15, max_new_tokens=args.tokens, seed=0).tokens
        return len(tokens[name])
    return run


rows = cpu_gemv.MAX_ROWS
console = Console()
with console.status("benchmarking") as status:
    t = run_interleaved({"fp16 GEMV kernel": contender(rows, "gemv"), "FBGEMM fp16": contender(0, "fbgemm")},
                        args.repeats, 1, lambda m: status.update(m))
same = torch.equal(tokens["gemv"], tokens["fbgemm"])
res = {"machine": machine(), "shape": args.shape, "n_tokens": args.tokens, "same_tokens": same,
       "results": [as_dict(x) for x in t.values()],
       "speedup_median": t["fp16 GEMV kernel"].summary()["tokens_per_s_median"]
       / t["FBGEMM fp16"].summary()["tokens_per_s_median"]}
for r in res["results"]:
    console.print(f"{r['name']:18s} {r['tokens_per_s_median']:6.1f} tok/s (IQR {r['tokens_per_s_q1']:.1f}–"
                  f"{r['tokens_per_s_q3']:.1f})")
console.print(f"GEMV kernel / FBGEMM: {res['speedup_median']:.2f}×, same tokens: {same}")
write_json(os.path.join(os.path.dirname(__file__), "results", f"cpu_gemv_ab_{args.shape}.json"), res)
