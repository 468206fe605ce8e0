"""Speculative decoding on the demo voice, measured with the real engine on the held-out sentences.

    python bench/demo_voice/measure.py [--bundle models/demo] [--data /work/data/demo] [--k 2,3,4,6] [--threads 1]
                                       [--draft bundle|int8|ngram|FILE|...] [--draft-temperature 1,0.7] [--gpt FILE]
                                       [--tv] [--eco] [-o out.json]

Each held-out sentence is spoken by its own speaker's built-in voice (the inference layout: the voice's transcript
+ the sentence as text, the voice's tokens as prompt), at upstream's default sampling (top_k 15, top_p 1, T 1,
repetition penalty 1.35), autoregressively and with the draft (the bundle's own by default) at each k and draft
temperature (run names `k4`, or `k4 T×0.7` when temperatures are given), one request at a time, in alternating
order, same seed. Reports mean acceptance length, acceptance rate, GPT tokens/s of both paths, the speedup, and the
generated/true length ratio (alignment sanity: a model that lost the text runs long or stops early). `--gpt` puts
another target trained on the demo's units in the bundle's target's place (a v2-shape one: build.py gpt --name
gpt_v2 ...), drafted for by a draft file or spec. `--tv` adds eco mode's cost in distribution: the total-variation
distance between the target's next-token distributions and its int8 copy's at every position the AR runs generated.
`--eco` times eco mode instead: the int8 target, alone and with the draft.
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
    ap.add_argument("--k", default="4", help="comma-separated draft lengths")
    ap.add_argument("--draft", default="bundle", help="bundle (its EAGLE draft), or a draft spec: int8, ngram, ...")
    ap.add_argument("--draft-temperature", default=None,
                    help="comma-separated draft temperatures (multiples of the request's), each at every k "
                         "(default: the draft's own)")
    ap.add_argument("--gpt", default=None, help="a target GPT file on the demo's units instead of the bundle's")
    ap.add_argument("--n", type=int, default=60, help="held-out sentences to use")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the CLI uses one per core)")
    ap.add_argument("--tv", action="store_true", help="also the total-variation distance between the target's and its "
                    "int8 copy's (eco mode's) next-token distributions along the sequences the AR runs generated")
    ap.add_argument("--eco", action="store_true", help="the target's int8 copy as the target (eco mode, LOSSY): "
                    "its speed with the draft, speculation over it being exact")
    ap.add_argument("-o", "--out", default=None, help="JSON results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from specdec import corpus, demo, voicebuild
    from specdec.api import generate
    from specdec.stats import SpecStats
    ks = [int(k) for k in args.k.split(",")]
    temps = [None] if args.draft_temperature is None else [float(t) for t in args.draft_temperature.split(",")]
    configs = {f"k{k}" + ("" if t is None else f" T×{t:g}"): (k, t) for t in temps for k in ks}
    bundle = demo.load(args.bundle)
    clips = [c for c in corpus.read_manifest(os.path.join(args.data, "manifest.jsonl")) if c.split == "test"]
    clips = [c for c in clips if c.speaker in bundle.voices][:args.n]
    true_len = voicebuild.load_tokens(args.data)
    runs = ["ar", *configs]
    target = bundle.gpt
    if args.gpt:
        from specdec.models.checkpoint import load_gpt
        target = load_gpt(args.gpt)
        if args.draft == "bundle":
            sys.exit("--draft bundle drafts for the bundle's own target only: give a draft for --gpt")
    if args.eco:
        from specdec.models.int8 import quantize_gpt
        target = quantize_gpt(target)
    drafter = bundle.draft if args.draft == "bundle" else args.draft
    stats = {r: SpecStats() for r in runs}
    secs = dict.fromkeys(runs, 0.0)
    ratios = {r: [] for r in runs}
    sequences = []  # (phones, prompt, tokens) of the AR runs, for --tv
    console = Console(stderr=True)
    with Progress(console=console) as progress:
        task = progress.add_task("held-out sentences", total=len(clips))
        for i, c in enumerate(clips):
            v = bundle.voice(c.speaker)
            phones = torch.cat([v.phones, bundle.frontend.phones(c.text, "en")[0]])
            order = runs if i % 2 == 0 else runs[::-1]  # alternate, so load drifts hit both paths alike
            for r in order:
                draft, (k, temp) = (None, (1, None)) if r == "ar" else (drafter, configs[r])
                t = time.perf_counter()
                out = generate(target, phones, v.tokens, draft=draft, k=k, seed=1000 + i, draft_temperature=temp)
                secs[r] += time.perf_counter() - t
                stats[r] = stats[r].merge(out.stats)
                ratios[r].append(out.tokens.numel() / true_len[c.id].numel())
                if r == "ar":
                    sequences.append((phones, v.tokens, out.tokens))
            progress.update(task, advance=1)
    ar_tps = stats["ar"].num_emitted_tokens / secs["ar"]
    res = {"sentences": len(clips), "draft": args.draft, "gpt": args.gpt or "bundle", "eco (lossy)": args.eco,
           "sampling": "top_k 15, top_p 1, T 1, repetition_penalty 1.35",
           "threads": torch.get_num_threads(), "load_avg_1min": os.getloadavg()[0],
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": {}}
    t = Table(title=f"demo voice, {len(clips)} held-out sentences (load {res['load_avg_1min']:.1f})")
    for col in ("run", "mean acc. length", "acc. rate", "per position", "tokens/s", "speedup", "len ratio (median)"):
        t.add_column(col)
    for r in runs:
        st, tps = stats[r], stats[r].num_emitted_tokens / secs[r]
        res["runs"][r] = {"mean_acceptance_length": st.mean_acceptance_length,
                          "draft_acceptance_rate": st.draft_acceptance_rate,
                          "acceptance_per_position": st.acceptance_per_position, "tokens_per_s": tps,
                          "speedup": tps / ar_tps, "length_ratio_median": statistics.median(ratios[r]),
                          "length_ratio_within_20pct": sum(abs(x - 1) <= 0.2 for x in ratios[r]) / len(ratios[r])}
        t.add_row(r, f"{st.mean_acceptance_length:.2f}" if r != "ar" else "–",
                  f"{st.draft_acceptance_rate:.3f}" if r != "ar" else "–",
                  " ".join(f"{a:.2f}" for a in st.acceptance_per_position) or "–", f"{tps:.1f}", f"{tps / ar_tps:.2f}×",
                  f"{statistics.median(ratios[r]):.2f}")
    Console().print(t)
    if args.tv:
        from specdec.bench import int8_distance
        res["int8_distance"] = tv = int8_distance(target, sequences)
        sm, top = tv["tv_softmax"], tv["tv_top15"]
        Console().print(f"TV(fp32, int8) over {tv['positions']} positions: softmax median {sm['median']:.3f} (p90 "
                        f"{sm['p90']:.3f}), top-15 median {top['median']:.3f} (p90 {top['p90']:.3f}); argmax "
                        f"agreement {tv['argmax_agreement']:.3f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
