"""specdec's autoregressive GPT path vs upstream `infer_panel_naive` (gpt-sovits-cpufast) at a real shape, and the
floor of one exact decode step on this machine (specdec.bench.decode_floor).

    python bench/ar_vs_upstream.py [--shape v2] [--tokens 150] [--repeats 7]

Random weights rounded to fp16 (as released checkpoints are), one process, interleaved rounds, medians.
Writes bench/results/ar_vs_upstream_<shape>.json.
"""
import argparse
import os

from rich.console import Console

from specdec.bench import ar_vs_upstream, decode_floor, floor_text, write_json

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
pr = res["speedup_paired"]
console.print(f"speedup: {res['speedup_median']:.2f}× (ratio of medians); per round {pr['median']:.2f}× (IQR "
              f"{pr['q1']:.2f}–{pr['q3']:.2f})   machine: {res['machine']['cpu']}, {res['machine']['date']}")
console.print(floor_text(floor, 1e3 / res["results"][0]["tokens_per_s_median"]))
write_json(os.path.join(os.path.dirname(__file__), "results", f"ar_vs_upstream_{args.shape}.json"), res)
