"""Training the fast decoder's token → log-mel network (specdec.models.fast_decoder) on a corpus, on CPU.

    python -m specdec.decoder_train --manifest /work/data/demo/manifest.jsonl --tokens tokens.safetensors \
        --work-dir /work/data/demo/ckpt-decoder --steps 6000 --out models/demo/decoder.safetensors

Inputs: the corpus manifest (JSONL rows with id, speaker, text, wav, split), the semantic tokens of every utterance
({id: LongTensor [T]} in a safetensors file, 25 Hz), and the texts' phones from the project's front-end (--phones).
Each training example is a random crop of `crop` tokens and its 4·crop mel frames; the conditioning statistics come
from a *different* utterance of the same speaker, so the network learns to take the voice from the reference, not
from the sentence's own spectrum. Loss: L1 on log-mel.
Held-out L1 (split "test", full utterances, each speaker's first training utterance as reference) is logged.
Checkpoints (model + optimiser + step) go to `work_dir`; re-running resumes.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from specdec.models import weights
from specdec.models.fast_decoder import FRAMES_PER_TOKEN, FastDecoderConfig, TokenToMel, save_fast_decoder, token_mel


@dataclass
class Utterance:
    id: str
    speaker: str
    tokens: torch.Tensor  # [T] long
    mel: torch.Tensor  # [4T, 80]
    phones: torch.Tensor  # [N] long: the text's phone ids (the front-end's symbol table)

    @property
    def stats(self) -> torch.Tensor:  # [2, 80]: the conditioning this utterance gives as a reference
        return torch.stack([self.mel.mean(0), self.mel.std(0).clamp(min=1e-3)])


@dataclass
class DecoderTrainConfig:
    steps: int = 6000
    batch_size: int = 16
    crop: int = 64  # tokens per training crop (2.56 s)
    lr: float = 2e-3
    min_lr: float = 1e-4
    warmup: int = 200
    weight_decay: float = 0.01
    eval_every: int = 250
    seed: int = 0


def load_corpus(manifest: str, tokens_path: str, cache: str | None = None,
                symbol_version: str = "v2") -> tuple[list[Utterance], list[Utterance]]:
    """(train, test) utterances with their mel targets aligned to 4 frames per token and their text's phones.
    Mels are cached in `cache`, phones beside it (`<cache>.phones-<symbol_version>`)."""
    with open(manifest, encoding="utf-8") as f:
        texts = {r["id"]: r["text"] for r in map(json.loads, f)}
    phones = _phones(texts, symbol_version, cache and f"{cache}.phones-{symbol_version}")
    if cache and os.path.isfile(cache):
        blob = weights.load_checkpoint(cache)
    else:
        blob = _mels(manifest, tokens_path)
        if cache:
            weights.save_checkpoint(blob, cache)
    return tuple([Utterance(**u, phones=phones[u["id"]]) for u in blob[k]] for k in ("train", "test"))


def _phones(texts: dict[str, str], symbol_version: str, cache: str | None) -> dict[str, torch.Tensor]:
    if cache and os.path.isfile(cache):
        return weights.load_checkpoint(cache)
    from specdec.models.text.frontend import Frontend
    frontend = Frontend(symbol_version)
    phones = {k: frontend.phones(t, "en")[0] for k, t in texts.items()}
    if cache:
        weights.save_checkpoint(phones, cache)
    return phones


def _mels(manifest: str, tokens_path: str) -> dict[str, list[dict]]:
    import soundfile as sf
    from safetensors.torch import load_file

    from specdec.models.audio import resample
    from specdec.models.fast_decoder import SAMPLE_RATE
    tokens = load_file(tokens_path)
    root = os.path.dirname(os.path.abspath(manifest))
    split: dict[str, list[dict]] = {"train": [], "test": []}
    with open(manifest, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    for row in rows:
        if row["id"] not in tokens:
            continue
        wav, sr = sf.read(os.path.join(root, row["wav"]), dtype="float32", always_2d=True)
        wav = torch.from_numpy(wav.mean(1))
        if sr != SAMPLE_RATE:
            wav = resample(wav, sr, SAMPLE_RATE)
        tok = tokens[row["id"]].long()
        mel = token_mel(wav, len(tok))
        split["test" if row.get("split") == "test" else "train"].append(
            {"id": row["id"], "speaker": row["speaker"], "tokens": tok, "mel": mel})
    return split


def make_batch(utts: list[Utterance], by_speaker: dict[str, list[Utterance]], cfg: DecoderTrainConfig,
               rng: random.Random) -> tuple[torch.Tensor, ...]:
    """→ tokens [B, crop], reference stats [B, 2, 80], phones [B, N] and their mask [B, N], target mel
    [B, 4·crop, 80] (short utterances edge-padded). A crop sees its whole sentence's phones, as a decode window does."""
    toks, stats, mels = [], [], []
    chosen = rng.sample(utts, cfg.batch_size)
    phones, mask = pad_phones([u.phones for u in chosen])
    for u in chosen:
        T = len(u.tokens)
        s = rng.randrange(0, max(1, T - cfg.crop + 1))
        t, m = u.tokens[s:s + cfg.crop], u.mel[s * FRAMES_PER_TOKEN:(s + cfg.crop) * FRAMES_PER_TOKEN]
        pad = cfg.crop - len(t)
        toks.append(torch.cat([t, t[-1:].expand(pad)]))
        mels.append(torch.cat([m, m[-1:].expand(pad * FRAMES_PER_TOKEN, -1)]))
        others = [o for o in by_speaker[u.speaker] if o is not u] or [u]
        stats.append(rng.choice(others).stats)
    return torch.stack(toks), torch.stack(stats), phones, mask, torch.stack(mels)


def pad_phones(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """→ phones [B, N] zero-padded, mask [B, N] (True = real)."""
    n = max(len(p) for p in seqs)
    phones = torch.zeros(len(seqs), n, dtype=torch.long)
    mask = torch.zeros(len(seqs), n, dtype=torch.bool)
    for i, p in enumerate(seqs):
        phones[i, :len(p)], mask[i, :len(p)] = p, True
    return phones, mask


def references(train: list[Utterance]) -> dict[str, torch.Tensor]:
    """Each speaker's fixed evaluation reference: its first training utterance's statistics."""
    refs: dict[str, torch.Tensor] = {}
    for u in train:
        refs.setdefault(u.speaker, u.stats)
    return refs


@torch.no_grad()
def evaluate(net: TokenToMel, test: list[Utterance], refs: dict[str, torch.Tensor]) -> float:
    net.eval()
    total = frames = 0.0
    for u in test:
        mask = torch.ones(1, len(u.phones), dtype=torch.bool)
        mel = net(u.tokens[None], refs[u.speaker][None], u.phones[None], mask)[0]
        total += F.l1_loss(mel, u.mel, reduction="sum").item() / mel.shape[1]
        frames += mel.shape[0]
    net.train()
    return total / frames


def lr_at(step: int, cfg: DecoderTrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, p)))


def train(train_utts: list[Utterance], test_utts: list[Utterance], work_dir: str, cfg: DecoderTrainConfig,
          model_cfg: FastDecoderConfig) -> TokenToMel:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
    os.makedirs(work_dir, exist_ok=True)
    ckpt = os.path.join(work_dir, "ckpt.pt")
    torch.manual_seed(cfg.seed)
    net = TokenToMel(model_cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay,
                            fused=True)
    step, log = 0, []
    if os.path.isfile(ckpt):
        state = weights.load_checkpoint(ckpt)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, log = state["step"], state["log"]
    rng = random.Random(cfg.seed * 7919 + step)  # resumed runs draw fresh batches
    by_speaker: dict[str, list[Utterance]] = {}
    for u in train_utts:
        by_speaker.setdefault(u.speaker, []).append(u)
    refs = references(train_utts)
    n_params = sum(p.numel() for p in net.parameters())
    t0, loss_avg = time.perf_counter(), None
    with Progress(TextColumn("[bold]decoder"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[info]}"), TimeRemainingColumn()) as bar:
        task = bar.add_task("", total=cfg.steps, completed=step, info=f"{n_params / 1e6:.2f}M params")
        while step < cfg.steps:
            tokens, stats, phones, mask, target = make_batch(train_utts, by_speaker, cfg, rng)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            loss = F.l1_loss(net(tokens, stats, phones, mask), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            step += 1
            loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
            if step % cfg.eval_every == 0 or step == cfg.steps:
                held = evaluate(net, test_utts, refs)
                log.append({"step": step, "train_l1": loss_avg, "held_l1": held, "s": time.perf_counter() - t0})
                weights.save_checkpoint({"model": net.state_dict(), "opt": opt.state_dict(), "step": step,
                                         "log": log, "config": asdict(model_cfg)}, ckpt)
                bar.console.print(f"step {step}: train L1 {loss_avg:.3f}, held-out L1 {held:.3f}")
            bar.update(task, completed=step, info=f"L1 {loss_avg:.3f}")
    return net.eval()


def _codebook_size(tokens_path: str) -> int:
    from safetensors import safe_open
    with safe_open(tokens_path, framework="pt") as f:
        meta = f.metadata() or {}
        if "n_tokens" in meta:
            return int(meta["n_tokens"])
        return 1 + max(int(f.get_tensor(k).max()) for k in f.keys())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--tokens", required=True, help="safetensors {utterance id: LongTensor [T]}")
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--out", required=True, help="fp16 safetensors weights to write at the end")
    ap.add_argument("--steps", type=int, default=DecoderTrainConfig.steps)
    ap.add_argument("--vocab-size", type=int, default=None, help="codebook size (default: the tokens file's n_tokens)")
    ap.add_argument("--dim", type=int, default=FastDecoderConfig.dim)
    ap.add_argument("--phones", default="v2", help="front-end symbol table the decoder reads (v1, v2), or none")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.work_dir, exist_ok=True)
    vocab_size = args.vocab_size or _codebook_size(args.tokens)
    symbols = "v2" if args.phones == "none" else args.phones
    train_utts, test_utts = load_corpus(args.manifest, args.tokens, os.path.join(args.work_dir, "features.pt"), symbols)
    from specdec.models.text.symbols import SYMBOL_TO_ID
    phone_vocab = 0 if args.phones == "none" else len(SYMBOL_TO_ID[args.phones])
    net = train(train_utts, test_utts, args.work_dir, DecoderTrainConfig(steps=args.steps),
                FastDecoderConfig(vocab_size=vocab_size, dim=args.dim, phone_vocab=phone_vocab))
    save_fast_decoder(net, args.out)


if __name__ == "__main__":
    main()
