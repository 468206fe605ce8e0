"""specdec's autoregressive GPT path vs upstream `infer_panel_naive` (gpt-sovits-cpufast) at a real shape, and the
floor of one exact decode step on this machine (specdec.bench.decode_floor).

    python bench/ar_vs_upstream.py [--shape v2] [--tokens 150] [--repeats 7]

Random weights rounded to fp16 (as released checkpoints are), one process, interleaved rounds, medians.
Writes bench/results/ar_vs_upstream_<shape>.json.
"""
import argparse
import os

from rich.console import Console

from specdec.bench import ar_vs_upstream, decode_floor, write_json

ap = argparse.ArgumentParser()
ap.add_argument("--shape", default="v2")
ap.add_argument("--tokens", type=int, default=150)
ap.add_argument("--repeats", type=int, default=7)
args = ap.parse_args()
console = Console()
with console.status("benchmarking") as status:
    res = ar_vs_upstream(args.shape, args.tokens, args.repeats, progress=lambda m: status.update(m))
    res["floor"] = floor = decode_floor(args.shape, progress=lambda m: status.update(f"floor: {m}"))
for r in res["results"]:
    console.print(f"{r['name']:28s} {r['tokens_per_s_median']:7.1f} tok/s  (IQR {r['tokens_per_s_q1']:.1f}–"
                  f"{r['tokens_per_s_q3']:.1f}, {r['runs']} runs, {r['tokens_median']} tokens)")
console.print(f"speedup: {res['speedup_median']:.2f}×   machine: {res['machine']['cpu']}, {res['machine']['date']}")
ms, mb = floor["ms_median"], floor["mb_per_step"]
up_ms = 1e3 / res["results"][0]["tokens_per_s_median"]
console.print(f"one decode step over {floor['context']} cached tokens: pass {ms['target pass']:.2f} ms = fp16-exact "
              f"matmuls {ms['fp16-exact matmuls']:.2f} + attention {ms['attention']:.2f} + "
              f"{floor['pass_beyond_kernels_ms']:.2f} other (fp32 matmuls: {ms['fp32 matmuls']:.2f})")
console.print(f"streaming {floor['stream_gb_per_s']:.1f} GB/s; a step reads {mb['weights_fp16']:.0f} MB of weights + "
              f"{mb['kv_fp32']:.0f} MB of K/V → bandwidth floor {floor['bandwidth_floor_ms']:.2f} ms "
              f"(upstream's fp32 weights: {floor['upstream_bandwidth_floor_ms']:.2f} ms)")
console.print(f"upstream {up_ms:.2f} ms per token → ceiling {up_ms / floor['kernel_floor_ms']:.2f}× with today's "
              f"kernels, {up_ms / floor['bandwidth_floor_ms']:.2f}× at the bandwidth floor")
write_json(os.path.join(os.path.dirname(__file__), "results", f"ar_vs_upstream_{args.shape}.json"), res)
