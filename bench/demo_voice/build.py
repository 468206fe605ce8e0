"""Rebuild the demo voice from scratch: corpus → tokenizer → target GPT → draft → bundle (models/demo/).

    python bench/demo_voice/build.py corpus   [--data /work/data/demo] [--sentences N --test-at M --word-sentences W]
    python bench/demo_voice/build.py tokens
    python bench/demo_voice/build.py tokenizer [--tokenizer-steps N]
    python bench/demo_voice/build.py gpt      [--minutes 40] [--layers 24 --width 512 --heads 16 --precision bf16
                                               --name gpt_v2]
    python bench/demo_voice/build.py draft    [--draft-steps N] [--draft-kind eagle|gpt --draft-layers N]
    python bench/demo_voice/build.py bundle   [--out models/demo]

Every step is resumable (re-run it after an interruption) and shows a rich progress bar; each writes under --data.
Training steps use --threads torch threads (1 by default: one core per job on a shared machine).
"""
from __future__ import annotations

import argparse
import os
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console)


def step_corpus(args) -> None:
    from specdec import corpus
    with _progress() as p:
        task = p.add_task("corpus", total=args.sentences + args.word_sentences)
        clips = corpus.build(args.data, n_sentences=args.sentences, n_test=args.test, test_at=args.test_at,
                             n_words=args.word_sentences,
                             progress=lambda i, n: p.update(task, completed=i))
    hours = sum(c.seconds for c in clips) / 3600
    n_test = sum(c.split == "test" for c in clips)
    console.print(f"corpus: {len(clips)} clips, {hours:.2f} h, {n_test} held out → {args.data}/manifest.jsonl")


def step_tokens(args) -> None:
    """Every clip's phonetic units from its phone segmentation → tokens.safetensors."""
    from specdec import voicebuild
    clips = _clips(args)
    with _progress() as p:
        task = p.add_task("tokens", total=len(clips))
        tokens = voicebuild.tokenize_corpus(args.data, clips, progress=lambda i, n: p.update(task, completed=i))
    console.print(f"tokens: {sum(t.numel() for t in tokens.values())} tokens → {args.data}/tokens.safetensors; "
                  + voicebuild.token_report(tokens))


def step_tokenizer(args) -> None:
    """Train the audio → units network (for reference clips without a segmentation) → tokenizer.safetensors."""
    import json

    import torch

    from specdec import voicebuild
    from specdec.models.tokenizer import save_tokenizer
    torch.set_num_threads(args.threads)
    with _progress() as p:
        task = p.add_task("tokenizer", total=args.tokenizer_steps)
        tok, report = voicebuild.train_tokenizer(
            args.data, _clips(args), voicebuild.load_tokens(args.data), args.tokenizer_steps,
            os.path.join(args.data, "ckpt", "tokenizer"),
            progress=lambda i, n, loss: p.update(task, completed=i, description=f"tokenizer CE {loss:.3f}"))
    save_tokenizer(tok, os.path.join(args.data, "tokenizer.safetensors"))
    with open(os.path.join(args.data, "tokenizer_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    console.print(f"tokenizer: held-out frame accuracy {report['held_out_accuracy']:.3f} after {report['steps']} steps")


def _clips(args):
    from specdec import corpus
    return corpus.read_manifest(os.path.join(args.data, "manifest.jsonl"))


def _utterances(args):
    from specdec import voicebuild
    from specdec.models.text import Frontend
    with console.status("phones (v2 front-end)"):
        return voicebuild.utterances(args.data, _clips(args), Frontend("v2"))


def gpt_config(args):
    from specdec.models.gpt import GPTConfig
    from specdec.models.tokenizer import N_UNITS
    return GPTConfig(n_layer=args.layers, d_model=args.width, n_head=args.heads or args.width // 64,
                     vocab_size=N_UNITS + 1, phoneme_vocab_size=732)


def step_gpt(args) -> None:
    """Train the target GPT (resumable from --data/ckpt, or ckpt/NAME with --name NAME); writes --data/NAME.safetensors
    (fp32, the draft's teacher), NAME_fp16.safetensors (fp16 weights as every upstream checkpoint: the copy to run and
    bench, which the exact CPU kernels take) and NAME_history.json (NAME: gpt by default)."""
    import json

    import torch

    from specdec.gpt_train import GPTTrainConfig, held_out_pairs, train_gpt
    from specdec.models.checkpoint import save_gpt
    torch.set_num_threads(args.threads)
    train, test = _utterances(args)
    cfg = GPTTrainConfig(steps=10**9, budget_s=args.minutes * 60, batch_tokens=args.batch_tokens, eval_every=50,
                         lr=args.lr, warmup=args.warmup, precision=args.precision)
    work = os.path.join(args.data, "ckpt", *([] if args.name == "gpt" else [args.name]))
    with _progress() as p:
        task = p.add_task("gpt", total=1000)

        def progress(frac, loss):
            p.update(task, completed=int(1000 * frac), description=f"gpt loss {loss:.3f}")

        def log(row):
            console.print(f"step {row['step']} ({row['seconds']:.0f} s): train {row['train_loss']:.3f}, "
                          f"held-out {row['loss']:.3f} nats, top-1 {row['acc']:.3f}")
        model, st = train_gpt(gpt_config(args), train, held_out_pairs(test, train), work, cfg, progress, log)
    save_gpt(model, os.path.join(args.data, f"{args.name}.safetensors"))
    save_gpt(model, os.path.join(args.data, f"{args.name}_fp16.safetensors"), dtype=torch.float16)
    with open(os.path.join(args.data, f"{args.name}_history.json"), "w") as f:
        json.dump(st.history, f, indent=1)


def step_draft(args) -> None:
    """Distil a draft on same-speaker pairs (the inference layout) against the target's warped p at upstream's
    default sampling: the EAGLE draft (--draft-kind eagle; resumable from --data/ckpt/draft, writes
    --data/draft.safetensors) or a small GPT of the target's width started from its first layers (--draft-kind gpt;
    ckpt/draft_gpt, draft_gpt.safetensors), each also as *_fp16.safetensors to run beside the fp16 target; for the
    target --data/NAME.safetensors other than gpt, the draft's files are prefixed NAME_. --precision as for the GPT."""
    import json

    import torch

    from specdec import voicebuild
    from specdec.distill import DistillConfig, distill, temperature_summary
    from specdec.models.checkpoint import load_gpt
    torch.set_num_threads(args.threads)
    train, test = _utterances(args)
    target = load_gpt(os.path.join(args.data, f"{args.name}.safetensors"))
    cfg = DistillConfig(kind=args.draft_kind, n_layer=args.draft_layers, steps=args.draft_steps, checkpoint_every=25,
                        precision=args.precision, passes=args.draft_passes)
    name = ("" if args.name == "gpt" else f"{args.name}_") + ("draft" if args.draft_kind == "eagle" else "draft_gpt")
    with _progress() as p:
        task = p.add_task(name, total=cfg.steps)
        report = distill(target, *voicebuild.pair_examples(train, test), os.path.join(args.data, f"{name}.safetensors"),
                         os.path.join(args.data, "ckpt", name), cfg,
                         progress=lambda i, n, loss: p.update(task, completed=i, description=f"{name} loss {loss:.3f}"))
    _fp16_copy(os.path.join(args.data, f"{name}.safetensors"), target)
    with open(os.path.join(args.data, f"{name}_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    before, after = (" / ".join(f"{x:.3f}" for x in report[k]) for k in ("alpha_before", "alpha_after"))
    console.print(f"draft: held-out α at draft steps 1–{len(report['alpha_after'])}: {before} → {after}; "
                  f"{temperature_summary(report)}")


def _fp16_copy(path: str, target) -> None:
    """PATH_fp16.safetensors beside a draft file (EAGLE or GPT), its recorded draft temperature kept."""
    import torch

    from specdec.models.checkpoint import load_gpt, save_gpt
    from specdec.models.eagle import is_eagle_file, load_eagle, save_eagle
    out = path.removesuffix(".safetensors") + "_fp16.safetensors"
    if is_eagle_file(path):
        save_eagle(load_eagle(path, target.cfg), out, target.cfg, torch.float16)
    else:
        save_gpt(load_gpt(path), out, dtype=torch.float16)


def step_bundle(args) -> None:
    """Assemble the shipped bundle: fp16 GPT and draft, tokenizer, the decoder (--decoder), one built-in voice per
    speaker (a 3-6 s training clip as reference)."""
    import shutil

    from specdec import voicebuild
    from specdec.models.text import Frontend
    out = args.out
    os.makedirs(out, exist_ok=True)
    for name in ("gpt", "draft", "draft_gpt"):  # the fp16 copies the gpt and draft steps wrote
        src = os.path.join(args.data, f"{name}_fp16.safetensors")
        if name != "draft_gpt" or os.path.isfile(src):
            shutil.copyfile(src, os.path.join(out, f"{name}.safetensors"))
    shutil.copyfile(os.path.join(args.data, "tokenizer.safetensors"), os.path.join(out, "tokenizer.safetensors"))
    shutil.copyfile(args.decoder, os.path.join(out, "decoder.safetensors"))
    clips, tokens, frontend = _clips(args), voicebuild.load_tokens(args.data), Frontend("v2")
    speakers = sorted({c.speaker for c in clips})
    for spk, clip in voicebuild.reference_clips(clips, speakers).items():
        voicebuild.make_voice(args.data, clip, tokens[clip.id], frontend).save(os.path.join(out, "voices", spk))
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    console.print(f"bundle → {out}: {total / 2**20:.1f} MB, voices {', '.join(speakers)}")


STEPS = {"corpus": step_corpus, "tokens": step_tokens, "tokenizer": step_tokenizer, "gpt": step_gpt,
         "draft": step_draft, "bundle": step_bundle}


def main(argv=None) -> int:
    from specdec.gpt_train import PRECISIONS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=list(STEPS))
    ap.add_argument("--data", default="/work/data/demo", help="working folder (corpus, tokens, checkpoints)")
    ap.add_argument("--sentences", type=int, default=6000)
    ap.add_argument("--test", type=int, default=60, help="held-out sentences (never trained on)")
    ap.add_argument("--word-sentences", type=int, default=0,
                    help="word-list sentences of common English words, for vocabulary breadth (training only)")
    ap.add_argument("--test-at", type=int, default=None,
                    help="the held-out sentences are the --test before this index (default: the last ones)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (one per job on a shared machine)")
    ap.add_argument("--tokenizer-steps", type=int, default=1500)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--minutes", type=float, default=52,
                    help="GPT training budget: minutes of its steps' CPU time ÷ threads (pauses do not count)")
    ap.add_argument("--batch-tokens", type=int, default=4000)
    ap.add_argument("--heads", type=int, default=None, help="GPT attention heads (default: width / 64)")
    ap.add_argument("--lr", type=float, default=1e-3, help="GPT peak learning rate")
    ap.add_argument("--warmup", type=int, default=100, help="GPT warm-up steps")
    ap.add_argument("--precision", choices=PRECISIONS, default="fp32",
                    help="GPT and draft training matmuls (bf16: CPU autocast, for the larger shapes)")
    ap.add_argument("--name", default="gpt", help="the target GPT's file and checkpoint name under --data")
    ap.add_argument("--draft-kind", choices=["eagle", "gpt"], default="eagle")
    ap.add_argument("--draft-layers", type=int, default=1)
    ap.add_argument("--draft-passes", type=int, default=4, help="EAGLE draft steps unrolled in training")
    ap.add_argument("--draft-steps", type=int, default=500)
    ap.add_argument("--decoder", default="/work/data/demo/decoder.safetensors", help="trained fast decoder")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "..", "models", "demo"),
                    help="bundle folder")
    args = ap.parse_args(argv)
    _fixed_mmap_threshold()
    STEPS[args.step](args)
    return 0


def _fixed_mmap_threshold() -> None:
    """glibc raises its mmap threshold as large blocks are freed, after which training's activations of ever-changing
    shapes come from a fragmenting heap: a v2-shape GPT grew from 8 to 13 GB resident in 25 minutes (2026-11-27).
    A fixed 1 MB threshold gives large blocks back to the system on free (3 GB, flat). No-op off glibc."""
    import ctypes
    try:
        ctypes.CDLL(None).mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
