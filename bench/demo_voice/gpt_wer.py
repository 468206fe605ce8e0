"""Intelligibility of the demo voice end to end: text → GPT tokens → fast decoder → WER.

    python bench/demo_voice/gpt_wer.py [--bundle models/demo] [--data /work/data/demo] [--n 60] [--out F.json]
                                       [--top-k 15] [--temperature 1.0] [--repetition-penalty 1.35] [--eco]
                                       [--seeds S] [--gpt FILE]

Each held-out sentence (split "test": texts never trained on) is spoken by its own speaker's built-in voice
(the default voice when that speaker is not built in) with `pipeline.synthesize`, top_k, T and the repetition penalty as
given (upstream's 15, 1 and 1.35 by default), top_p 1, seed 1000 + i (+ 10000 per further repeat with --seeds: a
sampled WER swings by several points from one set of seeds to the next), the bundle's draft at k=4 (speculative
decoding is exact, so the audio has the distribution of plain sampling); `--eco` runs the int8 target instead (lossy);
`--gpt` another target trained on the demo's units (plain sampling: the bundle's drafts are its own target's).
Whisper tiny.en transcribes; WER as in specdec.wer, pooled over every repeat and per repeat. Also reports the
decoder's real-time factor (decode seconds / audio seconds, 1 thread) and the whole pipeline's.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys

import torch

from specdec.wer import word_error_rate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wer import ASR, score  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=None, help="bundle folder (default: the installed models/demo)")
    ap.add_argument("--data", default="/work/data/demo", help="corpus folder with manifest.jsonl")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--top-k", type=int, default=15)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--repetition-penalty", type=float, default=1.35)
    ap.add_argument("--eco", action="store_true", help="int8 target (specdec's lossy eco mode)")
    ap.add_argument("--seeds", type=int, default=1, help="repeats of the sentence set, each with its own seeds")
    ap.add_argument("--gpt", default=None, help="a target GPT file on the demo's units instead of the bundle's")
    ap.add_argument("--save-wavs", default=None, help="folder for the generated wavs")
    ap.add_argument("--out", default="bench/results/demo_voice_gpt_wer.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from rich.progress import Progress

    from specdec import demo
    from specdec.pipeline import TTS, synthesize, write_wav
    from specdec.sampling import SamplingParams
    bundle = demo.load(args.bundle)
    with open(os.path.join(args.data, "manifest.jsonl"), encoding="utf-8") as f:
        rows = [r for r in map(json.loads, f) if r.get("split") == "test"][:args.n]
    if args.gpt:
        from specdec.models.checkpoint import load_gpt
        gpt, draft = load_gpt(args.gpt), None
    else:
        gpt, draft = bundle.gpt, bundle.draft
    if args.eco:
        from specdec.models.int8 import quantize_gpt
        gpt = quantize_gpt(gpt)
    tts = TTS(gpt, bundle.decoder, bundle.frontend, draft=draft, k=args.k)
    sr = bundle.decoder.sample_rate
    items, per = [], []
    decode_s = wall_s = audio_s = 0.0
    if args.save_wavs:
        os.makedirs(args.save_wavs, exist_ok=True)
    with Progress() as bar:
        task = bar.add_task("held-out sentences", total=len(rows) * args.seeds)
        for j in range(len(rows) * args.seeds):
            i, row, repeat = j % len(rows), rows[j % len(rows)], j // len(rows)
            voice = bundle.voice(row["speaker"] if row["speaker"] in bundle.voices else None)
            params = SamplingParams(top_k=args.top_k, temperature=args.temperature,
                                    repetition_penalty=args.repetition_penalty, seed=1000 + i + 10000 * repeat)
            audio, stats = synthesize(row["text"], tts, voice, params=params)
            items.append((audio, sr, row["text"]))
            decode_s, wall_s, audio_s = decode_s + stats.decode_s, wall_s + stats.wall_s, audio_s + stats.audio_s
            per.append({"id": row["id"], "voice": voice.name, "audio_s": stats.audio_s,
                        "true_s": row.get("seconds"), "tokens": stats.gpt.num_emitted_tokens})
            if args.save_wavs:
                write_wav(os.path.join(args.save_wavs, f"{row['id']}.wav"), audio, sr)
            bar.update(task, advance=1)
    result = score(ASR(), items)
    for u, p in zip(result["utterances"], per):
        u.update(p)
    us = result["utterances"]
    per_seed = [word_error_rate([u["ref"] for u in us[r:r + len(rows)]], [u["hyp"] for u in us[r:r + len(rows)]]).rate
                for r in range(0, len(us), len(rows))]
    result.update(decoder_rtf=decode_s / audio_s, pipeline_rtf=wall_s / audio_s, wer_per_seed=per_seed)
    print(f"GPT tokens → fast decoder: WER {100 * result['wer']:.1f}% ({result['errors']}/{result['words']} words, "
          f"{len(items)} sentences; per repeat {', '.join(f'{100 * w:.1f}' for w in per_seed)}); decoder RTF "
          f"{result['decoder_rtf']:.3f}, pipeline RTF {result['pipeline_rtf']:.3f}", file=sys.stderr)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   "machine": f"{platform.machine()} {os.cpu_count()} cpu, torch threads 1",
                   "bundle": args.bundle or "models/demo", "gpt": args.gpt or "bundle", "k": args.k if draft else None,
                   "eco (int8 target, lossy)": args.eco, "seeds": args.seeds,
                   "sampling": f"top_k {args.top_k}, top_p 1, T {args.temperature:g}, rep {args.repetition_penalty:g}",
                   **result}, f, indent=1)


if __name__ == "__main__":
    main()
