"""Distilling a draft from a frozen target on CPU: a small GPT (`kind="gpt"`) or an EAGLE head (`kind="eagle"`).

For each batch of (phones, semantic tokens) sequences — sequences the target itself generated, so the draft learns
what it will be asked to predict — the target runs teacher-forced once (no grad), giving per audio position the
distribution p the sampler would use there (the upstream warper chain: repetition penalty over the history, top-k,
temperature — exactly `specdec.sampling.warp`). At every audio position the draft minimises its rejection rate
1 − α = TV(p, q̃) = 1 − Σ_x min(p(x), q̃(x)), q̃ its distribution warped exactly as the drafter samples from it
(DistillSpec, Zhou et al. 2024), plus `kl_weight` · KL(p ‖ q) on its unwarped q: top-k zeroes the gradient of every
token outside the draft's own top k, and the KL term is what moves those in (a draft trained from scratch has no
other gradient towards them).
On the v2 pair, 150 steps on from the KL-trained 1200-step draft with the same batches, held-out α at draft steps
1–4 at the request's temperature: KL alone 0.790 / 0.769 / 0.757 / 0.747 (0.802 / 0.781 / 0.770 / 0.760 at its best
draft temperature, 0.8), rejection + 0.2 KL 0.884 / 0.860 / 0.848 / 0.836, rejection alone 0.889 / 0.865 / 0.853 /
0.842 (bench/results/distill_loss_ab_v2.json). Raw-logit distillation would spend capacity on the tail that top-k
discards.

  gpt    the project's GPT class at n_layer × d_model, its own embeddings and head. When the width matches the
         target's, embeddings, head and the first n_layer blocks start as copies of the target's (a layer-skip
         draft that then learns to finish the job).
  eagle  specdec.models.eagle: fed [h_{t-1} ; emb(x_t)], sharing the target's embeddings and head. Pass j + 1
         feeds it its own ĥ_{t-1} from pass j — what it sees at draft step j + 1 — trained the same way (EAGLE-3's
         "training-time test", `passes` deep), so acceptance holds up at later draft positions.

Acceptance α = Σ_x min(p(x), q̃(x)) is reported on held-out sequences before and after, at draft steps 1 …
`ALPHA_STEPS` (for gpt drafts all are the same: they never see target states). The draft file also records the
draft temperature (a multiple of the request's; any is exact) under which it keeps the most tokens per round on
them (drafts trained on KL alone came out broader than p, and sampling them cooler raised α). Checkpoints go to
`work_dir`; re-running with the same arguments resumes.
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from specdec.gpt_train import autocast, check_precision
from specdec.models import weights
from specdec.models.checkpoint import save_gpt
from specdec.models.eagle import EagleConfig, EagleDraft, save_eagle
from specdec.models.gpt import GPT, GPTConfig
from specdec.sampling import SamplingParams, warp

KINDS = ("gpt", "eagle")


@dataclass
class Example:
    phones: torch.Tensor  # [n] long
    tokens: torch.Tensor  # [m] long semantic tokens (prompt + continuation: one audio stream)
    bert: torch.Tensor | None = None


@dataclass
class DistillConfig:
    kind: str = "eagle"
    n_layer: int = 1
    d_model: int | None = None  # gpt drafts: None = the target's width
    n_head: int | None = None  # gpt drafts: None = keep the target's head_dim
    steps: int = 2000
    batch_tokens: int = 4000  # padded positions per batch
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    # eagle only: draft steps unrolled in training (1 = teacher-forced features only). Demo pair, 1200 steps each,
    # 60 held-out sentences at k = 4, draft temperature 1 / 0.7 / 0.5: 4 passes 3.22 / 3.43 / 3.39 tokens per round,
    # 2 passes 3.15 / 3.35 / 3.39 (bench/results/demo_voice_draft_passes.json). A pass costs one draft layer beside
    # the teacher's whole forward: +43 % step time over the 6-layer demo target, far less over a 24-layer one.
    passes: int = 4
    seed: int = 0
    checkpoint_every: int = 100
    precision: str = "fp32"  # training steps (teacher and draft): "fp32" or "bf16" (CPU autocast); α stays fp32
    kl_weight: float = 0.2  # of KL(p ‖ q) beside the rejection rate (module docstring)

    def __post_init__(self):
        check_precision(self.precision)
        if self.passes < 1:
            raise ValueError(f"passes must be >= 1 (got {self.passes})")


@dataclass
class _Batch:
    x: torch.Tensor  # [B, T, d] target-embedded inputs
    mask: torch.Tensor  # [B, T, T] prefix-LM mask
    h: torch.Tensor  # [B, T, d] target last-layer states
    audio: torch.Tensor  # [B, T] bool: positions whose next token is a semantic token
    p: torch.Tensor  # [N, V] warped target distribution at the audio positions
    seen: torch.Tensor  # [N, V] repetition-penalty history at those positions
    examples: list[Example]


def _batch(target: GPT, examples: list[Example], params: SamplingParams) -> _Batch:
    V = target.cfg.vocab_size
    with torch.no_grad():
        x, mask = _embed(target, examples)
        B, T = x.shape[:2]
        audio = torch.zeros(B, T, dtype=torch.bool)
        seen = torch.zeros(B, T, V, dtype=torch.bool)
        for b, e in enumerate(examples):
            n, m = e.phones.numel(), e.tokens.numel()
            audio[b, n:n + m - 1] = True  # position t predicts token t+1, an audio token
            hist = torch.zeros(m, V, dtype=torch.bool)
            hist[torch.arange(m), e.tokens] = True
            seen[b, n:n + m] = hist.cumsum(0) > 0  # history up to and including token t
        h = target.forward_dense(x, mask)
        ban = torch.zeros(int(audio.sum()), dtype=torch.bool)  # EOS bans depend on the step; training ignores EOS
        p, _ = warp(target.logits(h[audio]).float(), seen[audio], ban, params)
    return _Batch(x, mask, h, audio, p, seen[audio], examples)


def _embed(model: GPT, examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
    return model.embed_batch([e.phones for e in examples], [e.tokens for e in examples],
                             [e.bert for e in examples])


def _shift(h: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)


def _loss(batch: _Batch, q_logits: torch.Tensor, params: SamplingParams, kl_weight: float) -> torch.Tensor:
    """Mean rejection rate 1 − Σ min(p, q̃) (q̃ warped as the drafter samples) + kl_weight · KL(p ‖ q)."""
    q_logits = q_logits.float()
    ban = torch.zeros(q_logits.shape[0], dtype=torch.bool)
    rejection = 1 - torch.minimum(batch.p, warp(q_logits, batch.seen, ban, params)[0]).sum(-1).mean()
    kl = (batch.p * (torch.log(batch.p.clamp_min(1e-12)) - F.log_softmax(q_logits, -1))).sum(-1).mean()
    return rejection + kl_weight * kl


# ---- the two draft kinds: build, step-1 / step-2 logits, save -----------------------------------------------
def new_draft(target: GPT, cfg: DistillConfig) -> GPT | EagleDraft:
    c = target.cfg
    if cfg.kind == "eagle":
        return EagleDraft(EagleConfig(d_model=c.d_model, n_layer=cfg.n_layer, n_head=c.n_head))
    d = cfg.d_model or c.d_model
    n_head = cfg.n_head or max(1, d // c.head_dim)
    draft = GPT(GPTConfig(n_layer=cfg.n_layer, d_model=d, n_head=n_head, vocab_size=c.vocab_size,
                          phoneme_vocab_size=c.phoneme_vocab_size, bert_dim=c.bert_dim, norm_eps=c.norm_eps))
    if d == c.d_model and n_head == c.n_head and cfg.n_layer <= c.n_layer:
        own = draft.state_dict()
        draft.load_state_dict({k: v.detach().clone() for k, v in target.state_dict().items() if k in own})
    return draft


def _logits(target: GPT, draft, batch: _Batch, steps: int = 1) -> list[torch.Tensor]:
    """Draft logits at the audio positions for draft steps 1 … steps: an EAGLE draft's step j + 1 is fed its own
    step-j features (a GPT draft never sees target states: one set of logits serves every step)."""
    if isinstance(draft, EagleDraft):
        out, h = [], batch.h
        for _ in range(steps):
            h = draft.forward_dense(_shift(h.detach() if draft.training and h is not batch.h else h), batch.x,
                                    batch.mask)
            out.append(target.logits(h[batch.audio]))
        return out
    x, _ = _embed(draft, batch.examples)  # the draft's own embeddings; the mask is the batch's
    return [draft.logits(draft.forward_dense(x, batch.mask)[batch.audio])] * steps


def save_draft(draft, path: str, target: GPT) -> None:
    if isinstance(draft, EagleDraft):
        save_eagle(draft, path, target.cfg)
    else:
        save_gpt(draft, path)


# ---- evaluation and training --------------------------------------------------------------------------------
ALPHA_STEPS = 4  # draft steps whose held-out α is reported
DRAFT_TEMPERATURES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)  # the grid a distilled draft's own temperature is picked from


def tokens_per_round(alpha: tuple[float, ...]) -> float:
    """Tokens per round of len(alpha) drafts were each step's acceptance independent: 1 + α1 + α1·α2 + …"""
    out = run = 1.0
    for a in alpha:
        run *= a
        out += run
    return out


def temperature_summary(report: dict) -> str:
    """The draft temperature a `distill` report's file records, and what it buys held out (teacher-forced, k = 4)."""
    by_t, t = report["alpha_by_temperature"], report["draft_temperature"]
    return (f"it drafts at {t:g}× the request's temperature (teacher-forced tokens per 4-draft round "
            f"{tokens_per_round(by_t['1.0']):.2f} at 1 → {tokens_per_round(by_t[str(t)]):.2f})")


@torch.no_grad()
def acceptance_by_temperature(target: GPT, draft, examples: list[Example], params: SamplingParams,
                              temperatures: tuple[float, ...] = (1.0,), steps: int = ALPHA_STEPS
                              ) -> dict[float, tuple[float, ...]]:
    """Mean α at draft steps 1 … steps, teacher-forced, q warped exactly as the drafter samples at each draft
    temperature (a multiple of params.temperature)."""
    draft.eval()
    total = {t: [0.0] * steps for t in temperatures}
    n = 0
    for i in range(0, len(examples), 8):
        batch = _batch(target, examples[i:i + 8], params)
        ban = torch.zeros(batch.p.shape[0], dtype=torch.bool)
        for j, logits in enumerate(_logits(target, draft, batch, steps)):
            for t in temperatures:
                q_params = params if t == 1.0 else replace(params, temperature=params.temperature * t)
                total[t][j] += torch.minimum(batch.p, warp(logits, batch.seen, ban, q_params)[0]).sum().item()
        n += batch.p.shape[0]
    return {t: tuple(a / n for a in alpha) for t, alpha in total.items()}


def acceptance(target: GPT, draft, examples: list[Example], params: SamplingParams,
               steps: int = ALPHA_STEPS) -> tuple[float, ...]:
    """Mean α at draft steps 1 … steps at the request's own temperature."""
    return acceptance_by_temperature(target, draft, examples, params, (1.0,), steps)[1.0]


def _batches(examples: list[Example], batch_tokens: int, rng: random.Random):
    """Length-bucketed batches of at most `batch_tokens` padded positions, reshuffled every epoch."""
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


def distill(target: GPT, train: list[Example], held_out: list[Example], out_path: str, work_dir: str,
            cfg: DistillConfig = DistillConfig(), params: SamplingParams = SamplingParams(), progress=None) -> dict:
    """Train (or resume) a draft for `target`; writes `out_path` (safetensors) and returns a report."""
    if cfg.kind not in KINDS:
        raise ValueError(f"draft kind {cfg.kind!r}: expected one of {KINDS}")
    torch.manual_seed(cfg.seed)
    target.eval().requires_grad_(False)
    draft = new_draft(target, cfg)
    opt = torch.optim.AdamW(draft.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay,
                            fused=True)
    os.makedirs(work_dir, exist_ok=True)
    ckpt_path = os.path.join(work_dir, f"distill_{cfg.kind}.pt")
    step, history = 0, []
    if os.path.exists(ckpt_path):
        state = weights.load_checkpoint(ckpt_path)
        draft.load_state_dict(state["draft"])
        opt.load_state_dict(state["opt"])
        step, history = state["step"], state["history"]
    if step == 0:
        history.append({"step": 0, "alpha": list(acceptance(target, draft, held_out, params))})
    rng = random.Random(cfg.seed + step)
    batches = _batches(train, cfg.batch_tokens, rng)
    t0 = time.perf_counter()
    while step < cfg.steps:
        draft.train()
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        with autocast(cfg.precision):
            batch = _batch(target, [train[i] for i in next(batches)], params)
            steps = cfg.passes if isinstance(draft, EagleDraft) else 1
            loss = sum(_loss(batch, logits, params, cfg.kl_weight) for logits in _logits(target, draft, batch, steps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(draft.parameters(), 1.0)
        opt.step()
        step += 1
        if progress:
            progress(step, cfg.steps, loss.item())
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            weights.save_checkpoint({"draft": draft.state_dict(), "opt": opt.state_dict(), "step": step,
                                     "history": history}, ckpt_path)
    by_temperature = acceptance_by_temperature(target, draft, held_out, params, DRAFT_TEMPERATURES)
    after = by_temperature[1.0]
    history.append({"step": step, "alpha": list(after)})
    # the draft samples at the temperature that keeps the most tokens per round held out (q stays exact at any)
    draft.draft_temperature = max(DRAFT_TEMPERATURES, key=lambda t: tokens_per_round(by_temperature[t]))
    save_draft(draft.eval(), out_path, target)
    return {"kind": cfg.kind, "alpha_before": tuple(history[0]["alpha"]), "alpha_after": after, "steps": step,
            "draft_temperature": draft.draft_temperature,
            "alpha_by_temperature": {str(t): list(a) for t, a in by_temperature.items()},
            "seconds": time.perf_counter() - t0, "history": history}
