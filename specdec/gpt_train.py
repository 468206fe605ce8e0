"""Training the text-to-semantic GPT (specdec.models.gpt) from scratch on CPU, with upstream's input layout.

Upstream GPT-SoVITS trains on single utterances: [phones ; semantic tokens], prefix-LM mask (phones bidirectional,
tokens causal), cross-entropy on every next token and EOS. At inference it is prompted across sentences — the
reference transcript's phones then the target's as text, the reference clip's tokens as the audio prefix — a layout
single-utterance training never shows; a model trained that way comes out short in it. So a fraction `pair_prob` of
the examples are same-speaker *pairs* (A's phones + B's phones, A's tokens + B's tokens), exactly the inference
layout with A as the reference, and the loss covers both. Held-out loss is measured in that layout: a test
sentence B prompted by a training sentence of its speaker, counting B's tokens and EOS only.

Checkpoints (model, optimiser, step, history) go to `work_dir` every `checkpoint_every` steps; re-running resumes.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from specdec.models import weights
from specdec.models.gpt import GPT, GPTConfig


@dataclass
class Utterance:
    id: str
    speaker: str
    phones: torch.Tensor  # [n] long
    tokens: torch.Tensor  # [m] long


@dataclass
class GPTTrainConfig:
    steps: int = 2000
    # if set, the schedule runs on training seconds instead of steps (shared CPUs): each step's CPU time ÷ torch
    # threads, so time the job spends paused or crowded out does not count (wall time did: a run paused for 40
    # minutes mid-step lost 40 minutes of its schedule, 2026-11-27)
    budget_s: float | None = None
    batch_tokens: int = 6000  # padded positions per batch
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.01
    pair_prob: float = 0.7
    seed: int = 0
    checkpoint_every: int = 50
    eval_every: int = 200
    precision: str = "fp32"  # or "bf16": autocast matmuls (AMX/AVX512-BF16 CPUs: ~3x faster steps at the v2 shape)

    def __post_init__(self):
        check_precision(self.precision)


@dataclass
class Example:
    phones: torch.Tensor  # [n]
    tokens: torch.Tensor  # [m]
    loss_from: int = 0  # audio targets before this index are not scored (held-out: the prompt)

    def __len__(self) -> int:
        return self.phones.numel() + self.tokens.numel()


def pair(a: Utterance, b: Utterance) -> Example:
    """b prompted by a, as at inference: text a+b, audio a+b; scores b's tokens and EOS only."""
    return Example(torch.cat([a.phones, b.phones]), torch.cat([a.tokens, b.tokens]), a.tokens.numel())


def batch_loss(model: GPT, examples: list[Example]) -> tuple[torch.Tensor, int, int]:
    """Summed cross-entropy over the scored targets, their count and how many the argmax gets right.

    Position n-1+j (n phones) predicts token j; the last position predicts EOS."""
    eos = model.cfg.eos
    x, mask = model.embed_batch([e.phones for e in examples], [e.tokens for e in examples])
    sel_b, sel_t, targets = [], [], []
    for b, e in enumerate(examples):
        n, m = e.phones.numel(), e.tokens.numel()
        pos = torch.arange(n - 1 + e.loss_from, n + m)
        sel_b.append(torch.full_like(pos, b))
        sel_t.append(pos)
        targets.append(torch.cat([e.tokens[e.loss_from:], torch.tensor([eos])]))
    h = model.forward_dense(x, mask)
    logits = model.logits(h[torch.cat(sel_b), torch.cat(sel_t)])
    y = torch.cat(targets)
    loss = F.cross_entropy(logits.float(), y, reduction="sum")
    return loss, y.numel(), int((logits.argmax(-1) == y).sum())


def _examples(utts: list[Utterance], by_speaker: dict[str, list[Utterance]], pair_prob: float,
              rng: random.Random) -> list[Example]:
    out = []
    for u in utts:
        if rng.random() < pair_prob:
            a = rng.choice(by_speaker[u.speaker])
            out.append(Example(torch.cat([a.phones, u.phones]), torch.cat([a.tokens, u.tokens])))
        else:
            out.append(Example(u.phones, u.tokens))
    return out


def batches(train: list[Utterance], batch_tokens: int, pair_prob: float, seed: int):
    """Endless stream of length-bucketed batches; each epoch re-draws the pairs."""
    by_speaker: dict[str, list[Utterance]] = {}
    for u in train:
        by_speaker.setdefault(u.speaker, []).append(u)
    epoch = 0
    while True:
        rng = random.Random(seed * 1000 + epoch)
        order = train[:]
        rng.shuffle(order)
        exs = _examples(order, by_speaker, pair_prob, rng)
        groups = []
        for i in range(0, len(exs), 512):  # sort inside windows: similar lengths, still shuffled overall
            window = sorted(exs[i:i + 512], key=len)
            cur: list[Example] = []
            for e in window:
                if cur and len(e) * (len(cur) + 1) > batch_tokens:
                    groups.append(cur)
                    cur = []
                cur.append(e)
            if cur:
                groups.append(cur)
        rng.shuffle(groups)
        yield from groups
        epoch += 1


def held_out_pairs(test: list[Utterance], train: list[Utterance]) -> list[Example]:
    """Each test sentence prompted by a fixed training sentence of its speaker (the inference layout)."""
    first = {}
    for u in train:
        first.setdefault(u.speaker, []).append(u)
    return [pair(first[u.speaker][i % len(first[u.speaker])], u) for i, u in enumerate(test)]


@torch.no_grad()
def evaluate(model: GPT, examples: list[Example], batch: int = 16) -> dict:
    model.eval()
    tot, n, hit = 0.0, 0, 0
    for i in range(0, len(examples), batch):
        loss, k, h = batch_loss(model, examples[i:i + batch])
        tot, n, hit = tot + float(loss), n + k, hit + h
    model.train()
    return {"loss": tot / max(n, 1), "acc": hit / max(n, 1)}


PRECISIONS = ("fp32", "bf16")  # of training steps (GPT, drafts); see `autocast`


def check_precision(precision: str) -> None:
    """Configs check their precision when built, so a typo fails before any data is loaded."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")


def autocast(precision: str):
    """The training forward's precision: "fp32", or "bf16" (a CPU autocast; weights and optimiser stay fp32)."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


@dataclass
class TrainState:
    step: int = 0
    seconds: float = 0.0
    history: list = field(default_factory=list)


def progress_of(cfg: GPTTrainConfig, st: "TrainState") -> float:
    """Fraction of the schedule done: by training seconds when a budget is set, else by steps."""
    return min(1.0, st.seconds / cfg.budget_s if cfg.budget_s else st.step / cfg.steps)


def lr_at(cfg: GPTTrainConfig, step: int, frac: float) -> float:
    warm = min(1.0, (step + 1) / cfg.warmup)
    cos = 0.5 * (1 + math.cos(math.pi * frac))
    return cfg.lr * warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos)


def train_gpt(model_cfg: GPTConfig, train: list[Utterance], held_out: list[Example], work_dir: str,
              cfg: GPTTrainConfig = GPTTrainConfig(), progress=None, log=None) -> tuple[GPT, TrainState]:
    """Train (or resume) a GPT; returns the model (eval mode) and the state with the held-out history."""
    torch.manual_seed(cfg.seed)
    model = GPT(model_cfg)
    # fused: one kernel over all parameters instead of a Python loop of ops (6% of a v2 bf16 training step)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay,
                            fused=True)
    os.makedirs(work_dir, exist_ok=True)
    ckpt = os.path.join(work_dir, "gpt_train.pt")
    st = TrainState()
    if os.path.exists(ckpt):
        saved = weights.load_checkpoint(ckpt)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        st = TrainState(**saved["state"])
    stream = batches(train, cfg.batch_tokens, cfg.pair_prob, cfg.seed)
    for _ in range(st.step):  # replay the batch order so a resumed run sees what an unbroken run would
        next(stream)
    model.train()
    while progress_of(cfg, st) < 1.0:
        t0 = time.process_time()
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, st.step, progress_of(cfg, st))
        exs = next(stream)
        with autocast(cfg.precision):
            loss, n, _ = batch_loss(model, exs)
        opt.zero_grad(set_to_none=True)
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss = float(loss.detach()) / n  # per token, for the logs
        st.step += 1
        st.seconds += (time.process_time() - t0) / torch.get_num_threads()
        done = progress_of(cfg, st) >= 1.0
        if progress:
            progress(progress_of(cfg, st), loss)
        if st.step % cfg.eval_every == 0 or done:
            with autocast(cfg.precision):
                ev = evaluate(model, held_out)
            st.history.append({"step": st.step, "seconds": round(st.seconds, 1), "train_loss": loss, **ev})
            if log:
                log(st.history[-1])
        if st.step % cfg.checkpoint_every == 0 or done:
            weights.save_checkpoint({"model": model.state_dict(), "opt": opt.state_dict(), "state": asdict(st)}, ckpt)
    return model.eval(), st
