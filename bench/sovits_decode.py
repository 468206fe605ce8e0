"""SoVITS decode time: specdec vs upstream `SynthesizerTrn.decode` (gpt-sovits-cpufast==0.1.0), v2 shape, CPU.

Both decode the same random-weight model (saved as an upstream .pth and loaded by each side) with noise_scale 0;
runs are interleaved (ours, upstream, ours, ...) so machine load hits both alike; medians and min-max are printed.
Also times a streaming step: `decode_window` of the last 16 tokens with the whole sequence as context.

    python bench/sovits_decode.py [--tokens 50 200] [--reps 7] [--version v2] [--profile]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
import types

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from sovits_oracle import oracle_case, upstream_decode  # noqa: E402

from specdec.models.audio import linear_spectrogram  # noqa: E402
from specdec.models.decoder import SoVITSDecoder  # noqa: E402
from specdec.models.sovits import SV_DIM  # noqa: E402
from specdec.models.sovits_checkpoint import load_sovits  # noqa: E402


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def summary(xs: list[float]) -> dict:
    return {"median_s": statistics.median(xs), "min_s": min(xs), "max_s": max(xs), "n": len(xs)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, nargs="+", default=[50, 200])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--version", default="v2")
    ap.add_argument("--profile", action="store_true", help="print the top ops of one decode per side")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()

    case = oracle_case(args.version)
    ours = SoVITSDecoder(load_sovits(case.path), noise_scale=0.0)
    g = torch.Generator().manual_seed(0)
    spec = linear_spectrogram(0.1 * torch.randn(4 * 32000, generator=g))
    sv = torch.randn(SV_DIM, generator=g) if "Pro" in args.version else None
    voice = types.SimpleNamespace(refer_spec=spec, sv_emb=sv)
    results = {}
    for n in args.tokens:
        tokens = torch.randint(0, 1024, (n,), generator=g)
        phones = torch.randint(0, ours.cfg.n_symbols, (max(4, n // 2),), generator=g)
        a = ours.decode(tokens, phones, voice)  # warm-up, and the outputs must agree
        b = upstream_decode(case.upstream, tokens, phones, spec, sv)
        diff = float((a - b).abs().max())
        t_ours, t_up, t_win = [], [], []
        for _ in range(args.reps):
            t_ours.append(timed(lambda: ours.decode(tokens, phones, voice)))
            t_up.append(timed(lambda: upstream_decode(case.upstream, tokens, phones, spec, sv)))
            t_win.append(timed(lambda: ours.decode_window(tokens, phones, voice, n - 16, n)))
        audio_s = n * 0.04
        results[n] = {"ours": summary(t_ours), "upstream": summary(t_up), "window16_ours": summary(t_win),
                      "audio_s": audio_s, "max_abs_diff": diff}
        o, u, w = (statistics.median(x) for x in (t_ours, t_up, t_win))
        print(f"{n:4d} tokens ({audio_s:.1f} s audio): ours {o:.3f} s [{min(t_ours):.3f}-{max(t_ours):.3f}]  "
              f"upstream {u:.3f} s [{min(t_up):.3f}-{max(t_up):.3f}]  ratio {u / o:.2f}x  "
              f"RTF ours {o / audio_s:.3f}  | window(last 16 tok) {w:.3f} s  | max|diff| {diff:.1e}")
        if args.profile:
            from torch.profiler import profile
            for name, fn in [("ours", lambda: ours.decode(tokens, phones, voice)),
                             ("upstream", lambda: upstream_decode(case.upstream, tokens, phones, spec, sv))]:
                with profile() as p:
                    fn()
                print(f"--- {name}, {n} tokens\n" + p.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))

    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "torch": torch.__version__, "threads": torch.get_num_threads(), "loadavg_at_end": os.getloadavg(),
            "version": args.version, "reps": args.reps}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"sovits_decode_{args.version}.json")
    with open(path, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=2)
    print(f"{meta['date']}  torch {meta['torch']}  {meta['threads']} threads  load {meta['loadavg_at_end']}  -> {path}")


if __name__ == "__main__":
    main()
