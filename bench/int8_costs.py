"""int8 on CPU at a real shape: ms per step (the 96 block matmuls, and a whole target pass over 300 cached tokens)
for n = 1 and n = 5 rows, fp32 vs the exact fp16-weight GEMM vs int8 (and torchao's configs when installed), plus
the total-variation distance between fp32 and int8 next-token distributions (random fp16-exact weights).

    OMP_NUM_THREADS=1 python bench/int8_costs.py [--shape v2] [--repeats 15]

One process, interleaved repeats, medians. Writes bench/results/int8_costs_<shape>.json.
"""
import argparse
import os

import torch
from rich.console import Console

from specdec.bench import random_int8_distance, step_costs, write_json

ap = argparse.ArgumentParser()
ap.add_argument("--shape", default="v2")
ap.add_argument("--repeats", type=int, default=15)
args = ap.parse_args()
console = Console()
with console.status("benchmarking") as status:
    costs = step_costs(args.shape, repeats=args.repeats, progress=lambda m: status.update(m))
    status.update("total-variation distance fp32 vs int8")
    dist = random_int8_distance(args.shape)
for name, ms in costs["ms_median"].items():
    q1, q3 = costs["ms_iqr"][name]
    console.print(f"{name:58s} {ms:7.1f} ms  (IQR {q1:.1f}–{q3:.1f})")
console.print(f"TV(fp32, int8) softmax: {dist['tv_softmax']}; top-15: {dist['tv_top15']}; "
              f"argmax agreement {dist['argmax_agreement']:.3f}")
m = costs["machine"]
console.print(f"machine: {m['cpu']}, {m['cores']} cores, {torch.get_num_threads()} torch threads, {m['date']}")
write_json(os.path.join(os.path.dirname(__file__), "results", f"int8_costs_{args.shape}.json"),
           {**costs, "distance": dist})
