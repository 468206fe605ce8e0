"""Generation over the paged cache: prefill, then rounds of draft → verify → accept → rollback.

Autoregressive decoding is the same round with k = 0 drafts: the target "verifies" just the pending token and the
accept step samples the bonus token from p_1 — one loop, not two.

Per sequence, `table.num_tokens` = L counts the tokens whose K/V the target holds (text, prompt, generated).
The newest emitted token is *pending*: sampled but not yet fed. A round with k drafts:
  1. reserve k+1 slots; the drafter proposes d_1..d_k from the pending token (writing its own K/V as it goes);
  2. the target runs [pending, d_1..d_k] in one pass → p_1..p_{k+1};
  3. accept / resample / bonus (specdec.sampling.accept) → n accepted drafts + one new pending token;
  4. truncate the block table to L + 1 + n (rollback by length only).
"""
from __future__ import annotations

import secrets
import time
import weakref
from itertools import accumulate
from collections.abc import Generator
from dataclasses import dataclass, field, replace

import torch

from specdec.adaptive import PROBE_EVERY, Acceptance, Costs, choose_k
from specdec.cache import BlockTable, PagePool
from specdec.drafters import Drafter, Proposal, make_drafter
from specdec.errors import SpecdecError
from specdec.kernels import AttentionMetadata, cpu, default_backend
from specdec.models.gpt import GPT
from specdec.sampling import MIN_STEPS_BEFORE_EOS, SamplingParams, Verdict, accept, round_noise, seen_block, warp
from specdec.stats import SpecStats

DEFAULT_PAGE_SIZE = 64


@dataclass(eq=False)
class Request:
    phones: torch.Tensor  # [n_text] long: prompt phones + target phones
    prompt: torch.Tensor | None = None  # [n_prompt] long semantic tokens of the reference, or None (prompt-free)
    bert: torch.Tensor | None = None  # [bert_dim, n_text], or None for zeros (upstream's non-Chinese case)
    params: SamplingParams = field(default_factory=SamplingParams)
    k: int | None = None  # drafts per round; None: the engine's default
    generator: torch.Generator | None = None  # overrides params.seed (install() passes torch's default generator)


@dataclass
class GenerationOutput:
    tokens: torch.Tensor  # [n_generated] long, EOS excluded
    finish_reason: str  # "stop" (EOS: sampled or argmax) or "length" (max_new_tokens reached); vLLM's names
    stats: SpecStats


@dataclass(eq=False)
class Sequence:
    """Runtime state of one request."""

    request: Request
    table: BlockTable
    prefix_len: int  # text tokens (the bidirectional prefix)
    prompt_len: int  # reference prompt tokens
    k: int
    generator: torch.Generator
    seen: torch.Tensor  # [V] bool: every token in prompt + generated (the repetition-penalty set)
    draft_params: SamplingParams  # what the drafter warps with: the request's, at the engine's draft temperature
    generated: list[int] = field(default_factory=list)  # emitted tokens; the last one is pending until fed
    draft_len: int = 0  # tokens whose K/V the draft holds (may lag the target by the last accepted draft)
    done: bool = False
    reported: int = 0  # tokens already handed out by Engine.stream
    finish_reason: str = ""
    stats: SpecStats = field(default_factory=SpecStats)
    acceptance: Acceptance = field(default_factory=Acceptance)
    idle_rounds: int = 0  # consecutive rounds the adaptive policy chose not to draft

    @property
    def pending(self) -> int:
        return self.generated[-1]

    @property
    def pending_pos(self) -> int:
        return self.prefix_len + self.prompt_len + len(self.generated) - 1

    def audio_position(self, seq_pos: int) -> int:
        return seq_pos - self.prefix_len  # audio positions restart at 0 at the first prompt token

    def remaining(self) -> int:
        return self.request.params.max_new_tokens - len(self.generated)

    def emit(self, tokens: list[int]) -> None:
        self.generated.extend(tokens)
        if tokens:
            self.seen[tokens] = True


class Engine:
    """Target GPT + optional drafter over one page pool. Reused across calls; grows its pool on demand."""

    def __init__(self, target: GPT, draft: str | GPT | Drafter | None = None, k: int = 4,
                 page_size: int = DEFAULT_PAGE_SIZE, backend: str | None = None, adaptive: bool = False,
                 draft_threshold: float | None = None, draft_temperature: float | None = None):
        """k: drafts per round (the upper bound when `adaptive`); adaptive: pick each round's k from the
        sequence's observed acceptance and the measured costs (specdec.adaptive); draft_threshold: a drafter
        stops early when the token it just drew had probability below this under its own distribution;
        draft_temperature: the draft samples at this multiple of each request's temperature (None: the draft's own,
        which `specdec distill` measures and stores with it; else 1). Any value is exact (verification divides by
        the q the draft sampled from); a draft broader than the target accepts more below 1 (the demo's EAGLE draft
        over 60 held-out sentences: 3.12 → 3.48 tokens per k = 4 round at 0.5)."""
        if draft_temperature is not None and not 0.0 < draft_temperature < float("inf"):
            raise SpecdecError(f"draft_temperature must be positive and finite (got {draft_temperature})")
        self.target = target.eval()
        self.k_default = k if draft is not None else 0
        self.adaptive, self.draft_threshold = adaptive, draft_threshold
        self.costs = Costs()
        self.acceptance = Acceptance()  # over every sequence's rounds: the prior of the next sequence's estimate
        self.page_size = page_size
        self.backend = backend or default_backend(target.device)  # resolved once: it reads the environment
        self.pool: PagePool | None = None
        self.target_kv: list = []
        self.drafter: Drafter | None = make_drafter(draft, target)
        if self.drafter is not None:
            owner = self.drafter.engine() if self.drafter.engine is not None else None
            if owner is not None:  # its pages live in that engine's pool: sharing would draft from the wrong pages
                raise SpecdecError("this Drafter already serves another Engine; give each Engine its own (pass the "
                                   "draft model or spec, e.g. 'int8', and each Engine makes one)")
            self.drafter.engine = weakref.ref(self)
        self.draft_temperature = (draft_temperature if draft_temperature is not None
                                  else self.drafter.temperature if self.drafter is not None else 1.0)

    # ---- pool ----------------------------------------------------------------------------------------------
    def _ensure_pool(self, tokens_needed: int) -> None:
        blocks = -(-tokens_needed // self.page_size)
        if self.pool is not None and self.pool.num_blocks >= blocks:
            assert self.pool.num_free == self.pool.num_blocks, "pages leaked by an earlier call"
            return
        cfg = self.target.cfg
        self.pool = PagePool(blocks, self.page_size)
        self.target_kv = self.pool.new_kv(cfg.n_layer, cfg.n_head, cfg.head_dim, self.target.dtype, self.target.device)
        if self.drafter is not None:
            self.drafter.bind(self.pool, self.target_kv)

    def meta(self, seqs: list[Sequence], query_lens: list[int], seq_lens: list[int]) -> AttentionMetadata:
        return AttentionMetadata(query_lens, seq_lens, [s.prefix_len for s in seqs], [s.table.blocks for s in seqs],
                                 self.page_size, self.target.device, self.backend)

    # ---- entry points --------------------------------------------------------------------------------------
    def generate(self, requests: list[Request]) -> list[GenerationOutput]:
        run = self.stream(requests)
        while True:
            try:
                next(run)
            except StopIteration as done:
                return done.value

    @torch.inference_mode()
    def stream(self, requests: list[Request]) -> Generator[tuple[int, list[int]], None, list[GenerationOutput]]:
        """Yield (request index, tokens accepted this round) as rounds finish, so audio can be decoded in step with
        generation; returns the outputs. Closing the generator early frees the pages all the same."""
        t0 = time.perf_counter()
        need = sum(r.phones.numel() + (0 if r.prompt is None else r.prompt.numel()) + r.params.max_new_tokens
                   + (self.k_default if r.k is None else r.k) + 2 for r in requests)
        self._ensure_pool(need + self.page_size * len(requests))
        seqs = [self._new_sequence(r) for r in requests]
        try:
            live = seqs
            self._prefill(seqs)
            ttft = time.perf_counter() - t0
            for s in seqs:
                s.stats.ttft_s = ttft
            while True:
                for i, s in enumerate(seqs):
                    if s in live and len(s.generated) > s.reported:
                        new, s.reported = s.generated[s.reported:], len(s.generated)
                        yield i, new
                live = [s for s in live if not s.done]
                if not live:
                    break
                self._round(live)
        finally:
            for s in seqs:
                s.table.free()
        wall = time.perf_counter() - t0
        for s in seqs:
            s.stats.wall_s = wall
        return [GenerationOutput(torch.tensor(s.generated, dtype=torch.long), s.finish_reason, s.stats)
                for s in seqs]

    def _validate(self, r: Request) -> None:
        cfg = self.target.cfg
        if r.phones.ndim != 1 or r.phones.numel() == 0:
            raise SpecdecError("no phones to speak: the text produced an empty phone sequence")
        if int(r.phones.min()) < 0 or int(r.phones.max()) >= cfg.phoneme_vocab_size:
            raise SpecdecError(f"phone id {int(r.phones.max())} is outside the model's {cfg.phoneme_vocab_size}-symbol "
                               "vocabulary (v1/v2 symbol-set mismatch?)")
        if r.prompt is not None and r.prompt.numel() and (int(r.prompt.min()) < 0 or int(r.prompt.max()) >= cfg.eos):
            raise SpecdecError(f"prompt tokens must lie in [0, {cfg.eos}) (got {int(r.prompt.max())})")
        if r.bert is not None and tuple(r.bert.shape) != (cfg.bert_dim, r.phones.numel()):
            raise SpecdecError(f"bert features must be [{cfg.bert_dim}, {r.phones.numel()}] (one column per phone), "
                               f"got {list(r.bert.shape)}")

    def _new_sequence(self, r: Request) -> Sequence:
        self._validate(r)
        V = self.target.cfg.vocab_size
        seen = torch.zeros(V, dtype=torch.bool)
        if r.prompt is not None and r.prompt.numel():
            seen[r.prompt.long()] = True
        g = r.generator
        if g is None:
            g = torch.Generator()
            g.manual_seed(r.params.seed if r.params.seed is not None else secrets.randbits(63))  # upstream's seed=-1
        k = self.k_default if r.k is None else r.k
        if k < 0 or (k and self.drafter is None):
            raise SpecdecError(f"k = {k} drafts per round needs k >= 0 and a draft")
        prompt_len = 0 if r.prompt is None else r.prompt.numel()
        draft_params = r.params if self.draft_temperature == 1.0 else replace(
            r.params, temperature=r.params.temperature * self.draft_temperature)
        s = Sequence(r, BlockTable(self.pool), r.phones.numel(), prompt_len, k, g, seen, draft_params,
                     acceptance=self.acceptance.prior())
        s.stats.lossy = self.target.quantization is not None
        return s

    # ---- prefill: text (bidirectional) + prompt (causal), then the first token -------------------------------
    def _prefill(self, seqs: list[Sequence]) -> None:
        t = time.perf_counter()
        xs, lens = [], []
        for s in seqs:
            r = s.request
            x = self.target.embed_text(r.phones.to(self.target.device), r.bert)
            if r.prompt is not None and r.prompt.numel():
                m = r.prompt.numel()
                x = torch.cat([x, self.target.embed_audio(r.prompt.to(self.target.device).long(),
                                                          torch.arange(m, device=x.device))])
            xs.append(x)
            lens.append(x.shape[0])
            s.table.append(x.shape[0])
        meta = self.meta(seqs, lens, lens)
        h = self.target(torch.cat(xs), meta, self.target_kv)
        last = torch.tensor(lens).cumsum(0) - 1
        logits = self.target.logits(h[last])  # [B, V]
        if self.drafter is not None:
            self.drafter.prefill(seqs, xs, meta, h)
        for s in seqs:
            s.draft_len = s.table.num_tokens
            s.stats.prefill_s += time.perf_counter() - t
            s.stats.target_passes += 1
        self._accept(seqs, logits, [Proposal.empty() for _ in seqs])

    # ---- one round for every live sequence -------------------------------------------------------------------
    def _round(self, seqs: list[Sequence]) -> None:
        ks = [min(self._k(s), s.remaining() - 1) for s in seqs]
        for s, k in zip(seqs, ks):
            s.table.append(k + 1)
        t = time.perf_counter()
        proposals = self.drafter.propose(self, seqs, ks) if any(ks) else [Proposal.empty() for _ in seqs]
        t_draft = time.perf_counter() - t
        t = time.perf_counter()
        query_lens = [len(p.drafts) + 1 for p in proposals]
        for s, k, ql in zip(seqs, ks, query_lens):
            if ql < k + 1:  # the drafter stopped early (EOS proposed or unsure): give back the unused slots
                s.table.truncate(s.table.num_tokens - (k + 1 - ql))
        meta = self.meta(seqs, query_lens, [s.table.num_tokens for s in seqs])
        start = proposals[0].start_layer
        if start:  # layerskip: the draft already ran the first layers for these very tokens
            hidden = self.target(torch.cat([p.hidden for p in proposals]), meta, self.target_kv, start_layer=start)
            logits = self.target.logits(hidden)
        else:
            tokens, positions = [], []
            for s, p, ql in zip(seqs, proposals, query_lens):
                tokens += [s.pending] + p.drafts
                positions += [s.audio_position(s.pending_pos + i) for i in range(ql)]
            hidden, logits = self.target.decode(torch.tensor(tokens, device=self.target.device),
                                                torch.tensor(positions, device=self.target.device), meta,
                                                self.target_kv)  # [T, d], [T, V]
        t_verify = time.perf_counter() - t
        for s in seqs:
            s.stats.draft_s += t_draft / len(seqs)
            s.stats.verify_s += t_verify / len(seqs)
            s.stats.target_passes += 1
        positions = [s.pending_pos for s in seqs]
        accepted = self._accept(seqs, logits, proposals)
        # the policy weighs what a round costs besides drafting: the pass and its accept step
        self.costs.observe(max(query_lens) - 1, t_draft, time.perf_counter() - t)
        if self.drafter is not None:
            self.drafter.observe(seqs, hidden, query_lens, positions, accepted)
        for s, p, L, n in zip(seqs, proposals, positions, accepted):
            s.table.truncate(L + 1 + n)  # keep the old pending token and the accepted drafts
            s.draft_len = min(s.draft_len, L + 1 + n)
            s.acceptance.update(len(p.drafts), n)
            self.acceptance.update(len(p.drafts), n)

    def _k(self, s: Sequence) -> int:
        """This round's drafts for s: its k, or with `adaptive` the policy's choice (specdec.adaptive)."""
        if not (self.adaptive and s.k):
            return s.k
        k = choose_k(s.acceptance.alpha, self.costs, s.k)
        s.idle_rounds = s.idle_rounds + 1 if k == 0 else 0
        return 1 if k == 0 and s.idle_rounds % PROBE_EVERY == 0 else k

    def _accept(self, seqs: list[Sequence], logits: torch.Tensor, proposals: list[Proposal]) -> list[int]:
        """Warp the target logits of every position (one batched call), then accept/resample and emit per
        sequence; returns the number of accepted drafts per sequence."""
        triton = self.backend == "triton"
        if not triton and logits.is_cpu and cpu.available():
            verdicts = self._verdicts_cpu(seqs, logits.float(), proposals)
        else:
            ban = self._bans(seqs, proposals)
            verdicts = (self._verdicts_triton if triton else self._verdicts_torch)(seqs, logits, proposals, ban)
        accepted = []
        for s, p, verdict in zip(seqs, proposals, verdicts):
            s.emit(verdict.tokens)
            s.stats.record_round(len(p.drafts), verdict.num_accepted, len(verdict.tokens))
            if verdict.stopped or s.remaining() <= 0:
                s.done, s.finish_reason = True, "stop" if verdict.stopped else "length"
            accepted.append(verdict.num_accepted)
        return accepted

    @staticmethod
    def _bans(seqs, proposals) -> list[list[bool]]:
        """Per sequence and verified position: EOS banned there (its absolute step is below MIN_STEPS_BEFORE_EOS)."""
        return [[len(s.generated) + i < MIN_STEPS_BEFORE_EOS for i in range(len(p.drafts) + 1)]
                for s, p in zip(seqs, proposals)]

    @staticmethod
    def _warped(seqs, logits, proposals, ban) -> tuple[torch.Tensor, torch.Tensor]:
        """The target's rows of a round warped in one batched call (row i of a sequence penalises its drafts before
        i) → probs [N, V], argmax_eos [N]."""
        seen = [seen_block(s.seen, torch.tensor(p.drafts, dtype=torch.long)) for s, p in zip(seqs, proposals)]
        params = [s.request.params for s, p in zip(seqs, proposals) for _ in range(len(p.drafts) + 1)]
        return warp(logits, torch.cat(seen), torch.tensor(sum(ban, [])), params)

    def _verdicts_torch(self, seqs, logits, proposals, ban) -> list[Verdict]:
        probs, argmax_eos = self._warped(seqs, logits, proposals, ban)
        verdicts, q0 = [], 0
        for s, p, b in zip(seqs, proposals, ban):
            ql = len(p.drafts) + 1
            verdicts.append(accept(probs[q0:q0 + ql], p.q, p.drafts, argmax_eos[q0:q0 + ql], b, self.target.cfg.eos,
                                   s.generator))
            q0 += ql
        return verdicts

    def _verdicts_cpu(self, seqs, logits, proposals) -> list[Verdict]:
        """The same step in one C call (kernels/cpu.c `accept_round`), fed the same random numbers as the torch
        path. Demo voice, 2-core Xeon: the accept step of a plain step 0.32-0.38 → 0.16 ms, of a k=4 round 0.54 →
        0.20 ms (most of what is left is building its inputs)."""
        V = logits.shape[-1]
        drafts = [p.drafts for p in proposals]
        us, noise = [], torch.ones(len(seqs), V)
        for i, (s, d) in enumerate(zip(seqs, drafts)):
            u, e = round_noise(len(d), len(s.generated) < MIN_STEPS_BEFORE_EOS, V, s.generator)
            noise[i, :e.shape[0]] = e
            us.append(u)
        qs = [p.q for p in proposals if p.drafts]  # [n_drafts, V] in all
        q = (qs[0] if len(qs) == 1 else torch.cat(qs) if qs else torch.empty(0, V)).float().contiguous()
        out, broken = cpu.accept_round(logits.contiguous(), [0] + list(accumulate(len(d) + 1 for d in drafts)),
                                       sum(drafts, []), q, torch.cat(us), noise, torch.stack([s.seen for s in seqs]),
                                       [len(s.generated) for s in seqs], MIN_STEPS_BEFORE_EOS,
                                       [s.request.params for s in seqs])
        if broken:
            raise RuntimeError("the draft returned non-finite probabilities (a broken draft model?)")
        return [Verdict.decode(d, *row) for d, row in zip(drafts, out.tolist())]

    def _verdicts_triton(self, seqs, logits, proposals, ban) -> list[Verdict]:
        """The same step as fixed-shape kernels over the whole batch, fed the same random numbers (round_noise);
        one device → host copy at the end."""
        from specdec.kernels import triton_sampling  # lazy, as the attention kernels
        dev, V = logits.device, logits.shape[-1]
        drafts = [p.drafts for p in proposals]
        tokens = torch.tensor([t for d in drafts for t in [-1] + d], device=dev)  # -1: the pending token's row
        query_start_loc = torch.tensor([0] + list(accumulate(len(d) + 1 for d in drafts)), dtype=torch.int32,
                                       device=dev)
        ban_rows = torch.tensor(sum(ban, []), device=dev)
        params = [s.request.params for s, d in zip(seqs, drafts) for _ in range(len(d) + 1)]
        probs, argmax_eos = triton_sampling.warp(logits, torch.stack([s.seen for s in seqs]).to(dev), tokens,
                                                 query_start_loc, ban_rows, *triton_sampling.row_params(params, V, dev))
        q_rows, uniform, noise = [], [], torch.ones(len(seqs), V)
        for i, (s, p, b) in enumerate(zip(seqs, proposals, ban)):
            u, e = round_noise(len(p.drafts), b[0], V, s.generator)
            noise[i, :e.shape[0]] = e
            uniform += [u, torch.zeros(1)]
            q_rows += ([p.q.float()] if p.drafts else []) + [torch.zeros(1, V, device=dev)]
        q_rows = torch.cat(q_rows)  # [N, V]: row i of a sequence is draft i+1's distribution, the last row unused
        out = triton_sampling.accept(probs, q_rows, tokens, argmax_eos, ban_rows, torch.cat(uniform).to(dev),
                                     noise.to(dev), query_start_loc)
        *result, broken = torch.cat([out.flatten(), (~torch.isfinite(q_rows).all()).int()[None]]).tolist()
        if broken:
            raise RuntimeError("the draft returned non-finite probabilities (a broken draft model?)")
        return [Verdict.decode(d, *row) for d, row in zip(drafts, zip(result[0::3], result[1::3], result[2::3]))]
