"""Speculative decoding on the demo voice, measured with the real engine on the held-out sentences.

    python bench/demo_voice/measure.py [--bundle models/demo] [--data /work/data/demo] [--k 4] [-o results.json]

Each held-out sentence is spoken by its own speaker's built-in voice (the inference layout: the voice's transcript
+ the sentence as text, the voice's tokens as prompt), at upstream's default sampling (top_k 15, top_p 1, T 1,
repetition penalty 1.35), once autoregressively and once with the bundle's draft at k, one request at a time,
alternating, same seed. Reports mean acceptance length, acceptance rate, GPT tokens/s of both paths, the speedup,
and the generated/true length ratio (alignment sanity: a model that lost the text runs long or stops early).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=None, help="bundle folder (default: the installed models/demo)")
    ap.add_argument("--data", default="/work/data/demo", help="corpus folder (manifest + tokens)")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--n", type=int, default=60, help="held-out sentences to use")
    ap.add_argument("-o", "--out", default=None, help="JSON results")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from specdec import corpus, demo, voicebuild
    from specdec.api import generate
    from specdec.stats import SpecStats
    bundle = demo.load(args.bundle)
    clips = [c for c in corpus.read_manifest(os.path.join(args.data, "manifest.jsonl")) if c.split == "test"]
    clips = [c for c in clips if c.speaker in bundle.voices][:args.n]
    true_len = voicebuild.load_tokens(args.data)
    spec, ar = SpecStats(), SpecStats()
    spec_s = ar_s = 0.0
    ratios, rows = [], []
    console = Console(stderr=True)
    with Progress(console=console) as progress:
        task = progress.add_task("held-out sentences", total=len(clips))
        for i, c in enumerate(clips):
            v = bundle.voice(c.speaker)
            phones = torch.cat([v.phones, bundle.frontend.phones(c.text, "en")[0]])
            outs = {}
            for name, draft in (("ar", None), ("spec", bundle.draft)) if i % 2 == 0 else \
                    (("spec", bundle.draft), ("ar", None)):
                t = time.perf_counter()
                outs[name] = generate(bundle.gpt, phones, v.tokens, draft=draft, k=args.k, seed=1000 + i)
                dt = time.perf_counter() - t
                if name == "ar":
                    ar, ar_s = ar.merge(outs[name].stats), ar_s + dt
                else:
                    spec, spec_s = spec.merge(outs[name].stats), spec_s + dt
            n_true = true_len[c.id].numel()
            ratios.append(outs["spec"].tokens.numel() / n_true)
            rows.append({"id": c.id, "true_tokens": n_true, "ar_tokens": outs["ar"].tokens.numel(),
                         "spec_tokens": outs["spec"].tokens.numel(),
                         "mean_acceptance_length": outs["spec"].stats.mean_acceptance_length})
            progress.update(task, advance=1)
    res = {"k": args.k, "sentences": len(clips), "sampling": "top_k 15, top_p 1, T 1, repetition_penalty 1.35",
           "mean_acceptance_length": spec.mean_acceptance_length, "draft_acceptance_rate": spec.draft_acceptance_rate,
           "acceptance_per_position": spec.acceptance_per_position,
           "ar_tokens_per_s": ar.num_emitted_tokens / ar_s, "spec_tokens_per_s": spec.num_emitted_tokens / spec_s,
           "speedup": (spec.num_emitted_tokens / spec_s) / (ar.num_emitted_tokens / ar_s),
           "length_ratio_median": statistics.median(ratios),
           "length_ratio_within_20pct": sum(abs(r - 1) <= 0.2 for r in ratios) / len(ratios),
           "threads": torch.get_num_threads(), "load_avg_1min": os.getloadavg()[0],
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
    t = Table(title=f"demo voice, {len(clips)} held-out sentences, k={args.k}", show_header=False)
    for key in ("mean_acceptance_length", "draft_acceptance_rate", "ar_tokens_per_s", "spec_tokens_per_s", "speedup",
                "length_ratio_median", "length_ratio_within_20pct", "load_avg_1min"):
        t.add_row(key, f"{res[key]:.3f}")
    Console().print(t)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
