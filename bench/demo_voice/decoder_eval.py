"""Demo-voice decoders compared on held-out sentences: intelligibility (Whisper tiny.en WER) and speed (RTF, 1 thread).

    python bench/demo_voice/decoder_eval.py --manifest /work/data/demo/manifest.jsonl --tokens TOKENS \
        --features /work/data/demo/ckpt-decoder/features.pt --decoder models/demo/decoder.safetensors [--limit 60]

Systems, all decoding the ground-truth tokens of the test split with each speaker's first training utterance as
the voice reference:
- ceiling: the corpus audio itself;
- gt-mel: the utterance's true log-mel through the same Griffin-Lim (the vocoder's ceiling);
- lookup: per-token mean of speaker-normalised mel over the training set, de-normalised by the reference (no
  trained network: option (a), "centroid mel");
- model: the trained FastDecoder (option (b));
- streamed: the same, fed to `stream_decode` 5 tokens per round with the default ChunkPlan (each window sees only
  the tokens generated so far plus the lookahead); also reports its relative L1 distance to the one-shot decode's
  magnitude spectrogram.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wer import ASR, score  # noqa: E402

from specdec.decoder_train import load_corpus, references  # noqa: E402
from specdec.models.fast_decoder import (FRAMES_PER_TOKEN, HOP, N_FFT, N_MELS, SAMPLE_RATE,  # noqa: E402
                                         FastDecoder, MelInverse, griffin_lim)
from specdec.streaming import stream_decode  # noqa: E402


def lookup_table(train, vocab_size: int) -> torch.Tensor:
    """[K, 4, 80]: mean speaker-normalised mel frames of each token over the training utterances."""
    total, count = torch.zeros(vocab_size, FRAMES_PER_TOKEN, N_MELS), torch.zeros(vocab_size)
    for u in train:
        s = u.stats
        norm = ((u.mel - s[0]) / s[1]).view(-1, FRAMES_PER_TOKEN, N_MELS)
        total.index_add_(0, u.tokens, norm)
        count.index_add_(0, u.tokens, torch.ones(len(u.tokens)))
    return total / count.clamp(min=1)[:, None, None]


def _magnitude(wav: torch.Tensor) -> torch.Tensor:
    return torch.stft(wav, N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True).abs()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--features", default=None, help="load_corpus cache (written by specdec.decoder_train)")
    ap.add_argument("--decoder", required=True)
    ap.add_argument("--limit", type=int, default=60)
    ap.add_argument("--gl-iters", type=int, default=None, help="override the decoder's Griffin-Lim iterations")
    ap.add_argument("--systems", default="ceiling,gt-mel,lookup,model,streamed")
    ap.add_argument("--out", default="bench/results/demo_voice_decoder.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    train, test = load_corpus(args.manifest, args.tokens, args.features)
    test = test[:args.limit]
    refs = references(train)
    decoder = FastDecoder.from_file(args.decoder)
    if args.gl_iters:
        decoder.cfg.gl_iters = args.gl_iters
    inverse, iters = MelInverse(), decoder.cfg.gl_iters
    table = lookup_table(train, decoder.cfg.vocab_size)
    texts = {}
    with open(args.manifest, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            texts[row["id"]] = row["text"]

    def ceiling(u):
        import soundfile as sf
        root = os.path.dirname(os.path.abspath(args.manifest))
        with open(args.manifest, encoding="utf-8") as f:
            row = next(r for r in map(json.loads, f) if r["id"] == u.id)
        wav, sr = sf.read(os.path.join(root, row["wav"]), dtype="float32")
        return torch.from_numpy(wav), sr

    def gt_mel(u):
        return griffin_lim(inverse(u.mel), iters), SAMPLE_RATE

    def lookup(u):
        ref = refs[u.speaker]
        mel = table[u.tokens].reshape(-1, N_MELS) * ref[1] + ref[0]
        return griffin_lim(inverse(mel), iters), SAMPLE_RATE

    def model(u):
        voice = type("Voice", (), {"ref_mel_stats": refs[u.speaker]})()
        return decoder.decode(u.tokens, u.phones, voice), SAMPLE_RATE

    spectral_gap = []

    def streamed(u):
        voice = type("Voice", (), {"ref_mel_stats": refs[u.speaker]})()
        phones = u.phones
        rounds = [u.tokens[i:i + 5].tolist() for i in range(0, len(u.tokens), 5)]
        wav = torch.cat(list(stream_decode(rounds, decoder, phones, voice)))
        ref = _magnitude(decoder.decode(u.tokens, phones, voice))
        spectral_gap.append(((_magnitude(wav) - ref).abs().sum() / ref.sum()).item())
        return wav, SAMPLE_RATE

    systems = {"ceiling": ceiling, "gt-mel": gt_mel, "lookup": lookup, "model": model, "streamed": streamed}
    asr = ASR()
    results = {}
    for name in args.systems.split(","):
        items, decode_s, audio_s = [], 0.0, 0.0
        for u in test:
            t = time.perf_counter()
            with torch.inference_mode():
                wav, sr = systems[name](u)
            decode_s += time.perf_counter() - t
            audio_s += len(wav) / sr
            items.append((wav.numpy(), sr, texts[u.id]))
        r = score(asr, items)
        r["rtf"] = decode_s / audio_s  # streamed: includes its one-shot reference decode
        if name == "streamed":
            r["spectral_gap_mean"] = sum(spectral_gap) / len(spectral_gap)
        results[name] = r
        print(f"{name:8s} WER {100 * r['wer']:5.1f}% ({r['errors']}/{r['words']})  decode RTF {r['rtf']:.3f}",
              file=sys.stderr)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   "machine": f"{platform.machine()} {os.cpu_count()} cpu, torch threads 1",
                   "decoder": args.decoder, "gl_iters": iters, "n": len(test), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
