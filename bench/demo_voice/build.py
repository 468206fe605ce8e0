"""Rebuild the demo voice from scratch: corpus → tokenizer → target GPT → draft → bundle (models/demo/).

    python bench/demo_voice/build.py corpus   [--data /work/data/demo]
    python bench/demo_voice/build.py tokens
    python bench/demo_voice/build.py gpt      [--minutes 40]
    python bench/demo_voice/build.py draft    [--steps N]
    python bench/demo_voice/build.py bundle   [--out models/demo]

Every step is resumable (re-run it after an interruption) and shows a rich progress bar; each writes under --data.
Run with OMP_NUM_THREADS=1 on a shared machine.
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
        task = p.add_task("corpus", total=args.sentences)
        clips = corpus.build(args.data, n_sentences=args.sentences, n_test=args.test,
                             progress=lambda i, n: p.update(task, completed=i))
    hours = sum(c.seconds for c in clips) / 3600
    n_test = sum(c.split == "test" for c in clips)
    console.print(f"corpus: {len(clips)} clips, {hours:.2f} h, {n_test} held out → {args.data}/manifest.jsonl")


def step_tokens(args) -> None:
    """Fit the tokenizer on the training clips and tokenize every clip → tokenizer.safetensors, tokens.safetensors."""
    from specdec import voicebuild
    clips = _clips(args)
    with _progress() as p:
        task = p.add_task("features", total=len(clips))
        tok, stats, tokens = voicebuild.tokenize_corpus(args.data, clips, args.n_tokens,
                                                        progress=lambda i, n: p.update(task, completed=i))
    console.print(f"tokens: K={args.n_tokens}, {sum(t.numel() for t in tokens.values())} tokens "
                  f"→ {args.data}/tokens.safetensors; " + voicebuild.token_report(tokens))


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
    return GPTConfig(n_layer=args.layers, d_model=args.width, n_head=args.width // 64, vocab_size=args.n_tokens + 1,
                     phoneme_vocab_size=732)


def step_gpt(args) -> None:
    """Train the target GPT (resumable from --data/ckpt); writes --data/gpt.safetensors (fp32) and gpt_history.json."""
    import json

    import torch

    from specdec.gpt_train import GPTTrainConfig, held_out_pairs, train_gpt
    from specdec.models.checkpoint import save_gpt
    torch.set_num_threads(1)  # a shared machine: one core each
    train, test = _utterances(args)
    cfg = GPTTrainConfig(steps=10**9, budget_s=args.minutes * 60, batch_tokens=args.batch_tokens, eval_every=50)
    with _progress() as p:
        task = p.add_task("gpt", total=1000)

        def progress(frac, loss):
            p.update(task, completed=int(1000 * frac), description=f"gpt loss {loss:.3f}")

        def log(row):
            console.print(f"step {row['step']} ({row['seconds']:.0f} s): train {row['train_loss']:.3f}, "
                          f"held-out {row['loss']:.3f} nats, top-1 {row['acc']:.3f}")
        model, st = train_gpt(gpt_config(args), train, held_out_pairs(test, train), os.path.join(args.data, "ckpt"),
                              cfg, progress, log)
    save_gpt(model, os.path.join(args.data, "gpt.safetensors"))
    with open(os.path.join(args.data, "gpt_history.json"), "w") as f:
        json.dump(st.history, f, indent=1)


def step_draft(args) -> None:
    """Distil the EAGLE draft on same-speaker pairs (the inference layout) against the target's warped p at upstream's
    default sampling; resumable from --data/ckpt/draft. Writes --data/draft.safetensors (fp32)."""
    import json

    import torch

    from specdec import voicebuild
    from specdec.distill import DistillConfig, distill
    from specdec.models.checkpoint import load_gpt
    torch.set_num_threads(1)
    train, test = _utterances(args)
    target = load_gpt(os.path.join(args.data, "gpt.safetensors"))
    cfg = DistillConfig(kind="eagle", n_layer=args.draft_layers, steps=args.draft_steps, checkpoint_every=25)
    with _progress() as p:
        task = p.add_task("draft", total=cfg.steps)
        report = distill(target, *voicebuild.pair_examples(train, test), os.path.join(args.data, "draft.safetensors"),
                         os.path.join(args.data, "ckpt", "draft"), cfg,
                         progress=lambda i, n, kl: p.update(task, completed=i, description=f"draft KL {kl:.3f}"))
    with open(os.path.join(args.data, "draft_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    console.print(f"draft: held-out α (step 1 / step 2) {report['alpha_before']} → {report['alpha_after']}")


def step_bundle(args) -> None:
    """Assemble the shipped bundle: fp16 GPT and draft, tokenizer, the decoder (--decoder), one built-in voice per
    speaker (a 3-6 s training clip as reference)."""
    import shutil

    import torch

    from specdec import voicebuild
    from specdec.models.checkpoint import load_gpt, save_gpt
    from specdec.models.eagle import load_eagle, save_eagle
    from specdec.models.text import Frontend
    out = args.out
    os.makedirs(out, exist_ok=True)
    gpt = load_gpt(os.path.join(args.data, "gpt.safetensors"))
    save_gpt(gpt, os.path.join(out, "gpt.safetensors"), dtype=torch.float16)
    save_eagle(load_eagle(os.path.join(args.data, "draft.safetensors"), gpt.cfg), os.path.join(out, "draft.safetensors"),
               gpt.cfg, torch.float16)
    shutil.copyfile(os.path.join(args.data, "tokenizer.safetensors"), os.path.join(out, "tokenizer.safetensors"))
    shutil.copyfile(args.decoder, os.path.join(out, "decoder.safetensors"))
    clips, tokens, frontend = _clips(args), voicebuild.load_tokens(args.data), Frontend("v2")
    speakers = sorted({c.speaker for c in clips})
    for spk, clip in voicebuild.reference_clips(clips, speakers).items():
        voicebuild.make_voice(args.data, clip, tokens[clip.id], frontend).save(os.path.join(out, "voices", spk))
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    console.print(f"bundle → {out}: {total / 2**20:.1f} MB, voices {', '.join(speakers)}")


STEPS = {"corpus": step_corpus, "tokens": step_tokens, "gpt": step_gpt, "draft": step_draft, "bundle": step_bundle}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=list(STEPS))
    ap.add_argument("--data", default="/work/data/demo", help="working folder (corpus, tokens, checkpoints)")
    ap.add_argument("--sentences", type=int, default=6000)
    ap.add_argument("--test", type=int, default=60, help="held-out sentences (never trained on)")
    ap.add_argument("--n-tokens", type=int, default=128, help="tokenizer codebook size")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--minutes", type=float, default=52, help="GPT training budget (CPU seconds of its own steps)")
    ap.add_argument("--batch-tokens", type=int, default=4000)
    ap.add_argument("--draft-layers", type=int, default=1)
    ap.add_argument("--draft-steps", type=int, default=500)
    ap.add_argument("--decoder", default="/work/data/demo/decoder.safetensors", help="trained fast decoder")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "..", "models", "demo"),
                    help="bundle folder")
    args = ap.parse_args(argv)
    STEPS[args.step](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
