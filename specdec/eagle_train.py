"""Training an EAGLE-style draft (specdec.models.eagle) against a frozen target, on CPU.

For each batch of (phones, semantic tokens) sequences the target runs teacher-forced once (no grad), giving its
last-layer states h and, per audio position, the distribution p the sampler would use there (the upstream warper
chain: repetition penalty over the history, top-k, temperature — exactly `specdec.sampling.warp`). The draft is
fed [h_{t-1} ; emb(x_t)] and trained to minimise KL(p ‖ q) at every audio position, where q is the draft's
unwarped distribution (its warped version is what it samples from at inference). A second pass feeds the draft
its own ĥ_{t-1} instead of the target's h_{t-1} — what it sees from the second draft step on — and is trained the
same way ("training-time test", EAGLE-3), so acceptance holds up at later draft positions.

Acceptance α = Σ_x min(p(x), q(x)) with q warped as at inference is reported for held-out sequences before and
after, at draft step 1 (true h) and step 2 (own ĥ). Checkpoints go to `work_dir`; re-running resumes.
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from specdec.models.eagle import EagleConfig, EagleDraft, save_eagle
from specdec.models.gpt import GPT, prefix_lm_mask
from specdec.sampling import SamplingParams, warp


@dataclass
class Example:
    phones: torch.Tensor  # [n] long
    tokens: torch.Tensor  # [m] long semantic tokens (prompt + continuation: one audio stream)
    bert: torch.Tensor | None = None


@dataclass
class EagleTrainConfig:
    n_layer: int = 1
    steps: int = 2000
    batch_tokens: int = 4000  # padded positions per batch
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    second_pass: bool = True
    seed: int = 0
    checkpoint_every: int = 100


def _batch(target: GPT, examples: list[Example], params: SamplingParams):
    """Embedded inputs, mask, target states and warped target p for a padded batch; `audio` marks the positions
    whose next token is a semantic token (the ones a draft proposes)."""
    V = target.cfg.vocab_size
    lens = [e.phones.numel() + e.tokens.numel() for e in examples]
    T = max(lens)
    d = target.cfg.d_model
    x = torch.zeros(len(examples), T, d)
    audio = torch.zeros(len(examples), T, dtype=torch.bool)
    next_tok = torch.zeros(len(examples), T, dtype=torch.long)
    seen = torch.zeros(len(examples), T, V, dtype=torch.bool)
    with torch.no_grad():
        for b, e in enumerate(examples):
            n, m = e.phones.numel(), e.tokens.numel()
            x[b, :n] = target.embed_text(e.phones, e.bert)
            x[b, n:n + m] = target.embed_audio(e.tokens, torch.arange(m))
            audio[b, n:n + m - 1] = True  # position t predicts token t+1, an audio token
            next_tok[b, n:n + m - 1] = e.tokens[1:]
            hist = torch.zeros(m, V, dtype=torch.bool)
            hist[torch.arange(m), e.tokens] = True
            seen[b, n:n + m] = hist.cumsum(0) > 0  # history up to and including token t
        mask = prefix_lm_mask(torch.tensor([e.phones.numel() for e in examples]), torch.tensor(lens), T)
        h = target.forward_dense(x, mask)
        logits = target.logits(h[audio])
        ban = torch.zeros(logits.shape[0], dtype=torch.bool)  # EOS bans depend on the step; training ignores EOS
        p, _ = warp(logits, seen[audio], ban, params)
    return x, mask, h, audio, p, seen[audio]


def _draft_logits(target: GPT, draft: EagleDraft, h_prev, x, mask, audio):
    return target.logits(draft.forward_dense(h_prev, x, mask)[audio])


def _shift(h: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)


def _kl(p: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    logq = F.log_softmax(q_logits.float(), -1)
    return (p * (torch.log(p.clamp_min(1e-12)) - logq)).sum(-1).mean()


@torch.no_grad()
def acceptance(target: GPT, draft: EagleDraft, examples: list[Example], params: SamplingParams) -> tuple[float, float]:
    """Mean α at draft step 1 (fed the target's h) and step 2 (fed its own ĥ), teacher-forced."""
    draft.eval()
    a1, a2, n = 0.0, 0.0, 0
    for i in range(0, len(examples), 8):
        x, mask, h, audio, p, seen = _batch(target, examples[i:i + 8], params)
        ban = torch.zeros(p.shape[0], dtype=torch.bool)
        hat = draft.forward_dense(_shift(h), x, mask)
        q1, _ = warp(target.logits(hat[audio]), seen, ban, params)
        q2, _ = warp(_draft_logits(target, draft, _shift(hat), x, mask, audio), seen, ban, params)
        a1 += torch.minimum(p, q1).sum().item()
        a2 += torch.minimum(p, q2).sum().item()
        n += p.shape[0]
    return a1 / n, a2 / n


def _batches(examples: list[Example], batch_tokens: int, rng: random.Random):
    order = sorted(range(len(examples)), key=lambda i: examples[i].phones.numel() + examples[i].tokens.numel())
    groups, cur, cur_max = [], [], 0
    for i in order:
        L = examples[i].phones.numel() + examples[i].tokens.numel()
        if cur and max(cur_max, L) * (len(cur) + 1) > batch_tokens:
            groups.append(cur)
            cur, cur_max = [], 0
        cur.append(i)
        cur_max = max(cur_max, L)
    if cur:
        groups.append(cur)
    while True:
        rng.shuffle(groups)
        yield from groups


def train_eagle(target: GPT, train: list[Example], held_out: list[Example], out_path: str, work_dir: str,
                cfg: EagleTrainConfig = EagleTrainConfig(), params: SamplingParams = SamplingParams(),
                progress=None) -> dict:
    """Train (or resume) an EAGLE draft for `target`; writes `out_path` (safetensors) and returns a report."""
    torch.manual_seed(cfg.seed)
    target.eval().requires_grad_(False)
    c = target.cfg
    draft = EagleDraft(EagleConfig(d_model=c.d_model, n_layer=cfg.n_layer, n_head=c.n_head))
    opt = torch.optim.AdamW(draft.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    os.makedirs(work_dir, exist_ok=True)
    ckpt_path = os.path.join(work_dir, "eagle_train.pt")
    step, history = 0, []
    if os.path.exists(ckpt_path):
        state = torch.load(ckpt_path, weights_only=True)
        draft.load_state_dict(state["draft"])
        opt.load_state_dict(state["opt"])
        step, history = state["step"], state["history"]
    before = acceptance(target, draft, held_out, params) if step == 0 else tuple(history[0]["alpha"])
    if step == 0:
        history.append({"step": 0, "alpha": list(before)})
    rng = random.Random(cfg.seed + step)
    batches = _batches(train, cfg.batch_tokens, rng)
    t0 = time.perf_counter()
    while step < cfg.steps:
        draft.train()
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        x, mask, h, audio, p, _ = _batch(target, [train[i] for i in next(batches)], params)
        hat = draft.forward_dense(_shift(h), x, mask)
        loss = _kl(p, target.logits(hat[audio]))
        if cfg.second_pass:
            loss = loss + _kl(p, _draft_logits(target, draft, _shift(hat.detach()), x, mask, audio))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(draft.parameters(), 1.0)
        opt.step()
        step += 1
        if progress:
            progress(step, cfg.steps, float(loss))
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            torch.save({"draft": draft.state_dict(), "opt": opt.state_dict(), "step": step, "history": history},
                       ckpt_path + ".tmp")
            os.replace(ckpt_path + ".tmp", ckpt_path)
    after = acceptance(target, draft, held_out, params)
    history.append({"step": step, "alpha": list(after)})
    save_eagle(draft.eval(), out_path, c)
    return {"alpha_before": before, "alpha_after": after, "steps": step, "seconds": time.perf_counter() - t0,
            "history": history}
