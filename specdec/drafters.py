"""Drafters: who proposes the k tokens the target verifies.

  gpt          a small GPT of the target's own class with its own pages under the shared block ids;
  layerskip:N  the target's first N layers + its head (self-speculation): its K/V for those layers *is* the
               target's, written once into the target's own pages, and verification starts at layer N from the
               draft's hidden states;
  ngram        prompt lookup over the sequence's own history (prompt + generated); deterministic, q one-hot;
  int8[:N]     an int8 copy of the target (of its first N layers + head; specdec.models.int8) drafting over the
               target's own pages: lossy weights, exact output, near-full acceptance when N is the whole depth;
  eagle        a feature-level draft (specdec.models.eagle): one or two blocks fed the target's previous hidden
               state with the current token, sharing the target's embeddings and head.

The contract that keeps speculation exact: `Proposal.q[i]` is exactly the distribution `drafts[i]` was sampled
from. Drafters sample from the upstream warper chain applied to their own logits (same history, same EOS ban),
which maximises acceptance and costs nothing in exactness.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from specdec.cache import PagePool
from specdec.errors import SpecdecError
from specdec.kernels import AttentionMetadata
from specdec.models.gpt import GPT
from specdec.sampling import MIN_STEPS_BEFORE_EOS, exponential_noise, race, warp

if TYPE_CHECKING:
    from specdec.engine import Engine, Sequence


@dataclass
class Proposal:
    drafts: list[int]
    q: torch.Tensor | None  # [len(drafts), V]
    hidden: torch.Tensor | None = None  # [len(drafts)+1, d] layer-`start_layer` input for the verify pass
    start_layer: int = 0

    @staticmethod
    def empty() -> "Proposal":
        return Proposal([], None)


class Drafter:
    def bind(self, pool: PagePool, target_kv: list) -> None:
        """Called whenever the engine (re)creates its page pool."""

    def prefill(self, seqs: list["Sequence"], xs: list[torch.Tensor], meta: AttentionMetadata,
                target_hidden: torch.Tensor) -> None:
        """Called after the target's prefill, with its inputs and metadata."""

    def propose(self, engine: "Engine", seqs: list["Sequence"], ks: list[int]) -> list[Proposal]:
        raise NotImplementedError

    def observe(self, seqs: list["Sequence"], hidden: torch.Tensor, query_lens: list[int], positions: list[int],
                accepted: list[int]) -> None:
        """After each verify pass: the target's last-layer hidden states [T, d] for the rows it ran (per sequence
        query_lens[i] rows from position positions[i]), of which the first accepted[i] + 1 are now history."""


def _sample_drafts(seqs: list["Sequence"], logits: torch.Tensor, drafts: list[list[int]]
                   ) -> tuple[list[int], torch.Tensor]:
    """Warp the draft's logits [B, V] exactly as the target's would be at these positions (one batched call),
    sample one token per sequence, and return the tokens with the distributions they came from."""
    seen = torch.stack([s.seen for s in seqs])
    for i, d in enumerate(drafts):
        if d:
            seen[i, d] = True
    ban = [len(s.generated) + len(d) < MIN_STEPS_BEFORE_EOS for s, d in zip(seqs, drafts)]
    q, _ = warp(logits, seen, torch.tensor(ban), [s.request.params for s in seqs])
    tokens = [race(q[i], exponential_noise(b, q.shape[-1], s.generator)) for i, (s, b) in enumerate(zip(seqs, ban))]
    return tokens, q


class _ModelDrafter(Drafter):
    """Shared drafting loop of model-based drafters: feed tokens, sample from the exit logits, repeat."""

    model: GPT

    def _step(self, engine: "Engine", seqs: list["Sequence"], feeds: list[list[int]]) -> torch.Tensor:
        """Feed tokens (ending at each sequence's newest position) through the draft; returns [B, d] last rows."""
        raise NotImplementedError

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.logits(h)

    def _draft(self, engine: "Engine", seqs: list["Sequence"], ks: list[int]):
        """Up to ks[i] drafts per sequence → (drafts, q) keyed by id(sequence): the tokens and the [n, V]
        distributions they were sampled from (None when the sequence drafted nothing)."""
        eos = engine.target.cfg.eos
        drafts = {id(s): [] for s in seqs}
        qs = {id(s): [] for s in seqs}
        active = [s for s, k in zip(seqs, ks) if k > 0]
        kmax = dict(zip(map(id, seqs), ks))
        feeds = [self._catch_up(s) for s in active]
        while active:
            h = self._step(engine, active, feeds)
            tokens, q = _sample_drafts(active, self.logits(h), [drafts[id(s)] for s in active])
            nxt, feeds = [], []
            for i, (s, d) in enumerate(zip(active, tokens)):
                drafts[id(s)].append(d)
                qs[id(s)].append(q[i])
                unsure = engine.draft_threshold is not None and float(q[i, d]) < engine.draft_threshold
                if len(drafts[id(s)]) < kmax[id(s)] and d != eos and not unsure:
                    nxt.append(s)
                    feeds.append([d])
            active = nxt
        return drafts, {i: torch.stack(q) if q else None for i, q in qs.items()}

    def _catch_up(self, s: "Sequence") -> list[int]:
        """Tokens the draft has not seen yet, ending with the pending token."""
        first_gen = s.prefix_len + s.prompt_len
        return [s.generated[p - first_gen] for p in range(s.draft_len, s.pending_pos + 1)]


class GPTDrafter(_ModelDrafter):
    def __init__(self, model: GPT, target: GPT):
        if model.cfg.vocab_size != target.cfg.vocab_size or model.cfg.phoneme_vocab_size != target.cfg.phoneme_vocab_size:
            raise SpecdecError(f"draft vocabularies ({model.cfg.phoneme_vocab_size} phones, {model.cfg.vocab_size} "
                               f"tokens) differ from the target's ({target.cfg.phoneme_vocab_size}, "
                               f"{target.cfg.vocab_size})")
        self.model = model.eval()
        self.kv: list = []

    def bind(self, pool, target_kv):
        c = self.model.cfg
        self.kv = pool.new_kv(c.n_layer, c.n_head, c.head_dim, self.model.dtype, self.model.device)

    def prefill(self, seqs, xs, meta, target_hidden):
        parts = []
        for s in seqs:
            r = s.request
            x = self.model.embed_text(r.phones, r.bert)
            if s.prompt_len:
                x = torch.cat([x, self.model.embed_audio(r.prompt.long(), torch.arange(s.prompt_len))])
            parts.append(x)
        self.model(torch.cat(parts), meta, self.kv)

    def _step(self, engine, seqs, feeds):
        lens = [len(f) for f in feeds]
        ends = [s.draft_len + n for s, n in zip(seqs, lens)]
        tokens = [t for f in feeds for t in f]
        positions = [s.audio_position(p) for s, e, n in zip(seqs, ends, lens) for p in range(e - n, e)]
        x = self.model.embed_audio(torch.tensor(tokens), torch.tensor(positions))
        h = self.model(x, engine.meta(seqs, lens, ends), self.kv)
        for s, e in zip(seqs, ends):
            s.draft_len = e
        return h[torch.tensor(lens).cumsum(0) - 1]

    def propose(self, engine, seqs, ks):
        drafts, qs = self._draft(engine, seqs, ks)
        return [Proposal(drafts[id(s)], qs[id(s)]) for s in seqs]


class SharedPagesDrafter(_ModelDrafter):
    """A draft of the target's own shape that reads and writes the target's K/V pages: the target's first N layers
    (`layerskip:N`, whose K/V *are* the target's) or an int8 copy of them (`int8[:N]`, whose K/V for the drafted
    tokens are approximate). Either way verification rewrites every drafted slot with the target's exact K/V, so
    the cache stays exact for accepted history, and the draft needs no pages, prefill or catch-up of its own. With
    `handoff` (the target's own layers) verification starts at layer N from the draft's hidden states."""

    def __init__(self, model: GPT, n_layers: int, handoff: bool):
        self.model, self.n, self.handoff = model, n_layers, handoff
        self.kv: list = []
        self._hidden: dict[int, list[torch.Tensor]] = {}

    def bind(self, pool, target_kv):
        self.kv = target_kv  # the very pages of the target's first N layers

    def _step(self, engine, seqs, feeds):
        # always one token per sequence: the draft's K/V never lags the target's (they are the same pages)
        tokens = [f[-1] for f in feeds]
        ends = [s.draft_len + 1 for s in seqs]
        x = self.model.embed_audio(torch.tensor(tokens), torch.tensor([s.audio_position(e - 1)
                                                                       for s, e in zip(seqs, ends)]))
        h = self.model(x, engine.meta(seqs, [1] * len(seqs), ends), self.kv, end_layer=self.n)
        for i, (s, e) in enumerate(zip(seqs, ends)):
            s.draft_len = e
            if self.handoff:
                self._hidden[id(s)].append(h[i:i + 1])
        return h

    def _catch_up(self, s):
        return [s.pending]

    def propose(self, engine, seqs, ks):
        for s in seqs:
            s.draft_len = s.pending_pos  # the target wrote everything before the pending token
            if self.handoff:
                self._hidden[id(s)] = []
        drafts, qs = self._draft(engine, seqs, ks)
        if not self.handoff:
            return [Proposal(drafts[id(s)], qs[id(s)]) for s in seqs]
        # the last draft (or the pending token, when k = 0) still needs its first-N-layer pass for the verifier
        tails = [s for s in seqs if len(self._hidden[id(s)]) == len(drafts[id(s)])]
        if tails:
            self._step(engine, tails, [[drafts[id(s)][-1] if drafts[id(s)] else s.pending] for s in tails])
        return [Proposal(drafts[id(s)], qs[id(s)],
                         torch.cat(self._hidden.pop(id(s))), self.n) for s in seqs]


class EagleDrafter(_ModelDrafter):
    """Drafts with specdec.models.eagle.EagleDraft; keeps each sequence's recent target hidden states."""

    def __init__(self, model, target: GPT):
        if model.cfg.d_model != target.cfg.d_model:
            raise SpecdecError(f"EAGLE draft width {model.cfg.d_model} differs from the target's {target.cfg.d_model}")
        self.model, self.target = model.eval(), target
        self.kv: list = []
        self._h: dict[int, dict[int, torch.Tensor]] = {}  # per sequence: position → target hidden state [d]
        self._next: dict[int, int] = {}  # per sequence: the position the next draft step writes
        self._hat: dict[int, torch.Tensor] = {}  # per sequence: the draft's last ĥ (stands in for an unverified h)

    def bind(self, pool, target_kv):
        c = self.model.cfg
        self.kv = pool.new_kv(c.n_layer, c.n_head, c.head_dim, self.target.dtype, self.target.device)

    def logits(self, h):
        return self.target.logits(h)  # the target's own head

    def prefill(self, seqs, xs, meta, target_hidden):
        h_prev, q0 = [], 0
        for s, x in zip(seqs, xs):
            h = target_hidden[q0:q0 + x.shape[0]]
            h_prev.append(torch.cat([h.new_zeros(1, h.shape[1]), h[:-1]]))  # nothing precedes position 0
            self._h[id(s)] = {x.shape[0] - 1: h[-1]}
            q0 += x.shape[0]
        self.model(torch.cat(h_prev), torch.cat(xs), meta, self.kv)

    def observe(self, seqs, hidden, query_lens, positions, accepted):
        q0 = 0
        for s, ql, L, n in zip(seqs, query_lens, positions, accepted):
            store = self._h.setdefault(id(s), {})
            for i in range(n + 1):
                store[L + i] = hidden[q0 + i]
            q0 += ql

    def _step(self, engine, seqs, feeds):
        h_prev, tokens, positions, lens, ends = [], [], [], [], []
        for s, f in zip(seqs, feeds):
            p0, store = self._next[id(s)], self._h[id(s)]
            for j, tok in enumerate(f):
                t = p0 + j
                h_prev.append(store[t - 1] if t - 1 in store else self._hat[id(s)][0])
                tokens.append(tok)
                positions.append(s.audio_position(t))
            lens.append(len(f))
            ends.append(p0 + len(f))
        x_emb = self.target.embed_audio(torch.tensor(tokens), torch.tensor(positions))
        h = self.model(torch.stack(h_prev), x_emb, engine.meta(seqs, lens, ends), self.kv)
        last = h[torch.tensor(lens).cumsum(0) - 1]
        for i, (s, e) in enumerate(zip(seqs, ends)):
            self._next[id(s)], self._hat[id(s)] = e, last[i:i + 1]
            s.draft_len = min(e, s.pending_pos + 1)  # only positions fed true hidden states count as seen
        return last

    def propose(self, engine, seqs, ks):
        for s in seqs:
            self._next[id(s)] = s.draft_len
            store = self._h[id(s)]
            for t in [t for t in store if t < s.draft_len - 1]:
                del store[t]  # fed already
        drafts, qs = self._draft(engine, seqs, ks)
        return [Proposal(drafts[id(s)], qs[id(s)]) for s in seqs]


class NgramDrafter(Drafter):
    """Prompt lookup: find the longest recent n-gram (n ≤ max_ngram) that occurred before in the history and
    propose what followed it."""

    def __init__(self, vocab_size: int, max_ngram: int = 3):
        self.vocab_size, self.max_ngram = vocab_size, max_ngram

    def propose(self, engine, seqs, ks):
        out = []
        for s, k in zip(seqs, ks):
            prompt = s.request.prompt.tolist() if s.prompt_len else []
            drafts = lookup(prompt + s.generated, k, self.max_ngram) if k else []
            q = torch.zeros(len(drafts), self.vocab_size)
            q[torch.arange(len(drafts)), drafts] = 1.0
            out.append(Proposal(drafts, q if drafts else None))
        return out


def lookup(history: list[int], k: int, max_ngram: int) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of the history's longest matching suffix."""
    n_hist = len(history)
    for n in range(min(max_ngram, n_hist - 1), 0, -1):
        suffix = history[n_hist - n:]
        for start in range(n_hist - n - 1, -1, -1):
            if history[start:start + n] == suffix:
                return history[start + n:start + n + k]
    return []


def make_drafter(draft, target: GPT) -> Drafter | None:
    """None | Drafter | GPT | EagleDraft | path to either | "layerskip:N" | "int8" | "int8:N" | "ngram" | "ngram:N"
    → a Drafter. A quantised GPT (specdec.models.int8.quantize_gpt) drafts like any other."""
    if draft is None or isinstance(draft, Drafter):
        return draft
    from specdec.models.eagle import EagleDraft, is_eagle_file, load_eagle
    if isinstance(draft, GPT):
        return GPTDrafter(draft, target)
    if isinstance(draft, EagleDraft):
        return EagleDrafter(draft, target)
    if isinstance(draft, str):
        kind, _, arg = draft.partition(":")
        try:
            if kind == "layerskip":
                n = int(arg)
                if not 1 <= n < target.cfg.n_layer:
                    raise SpecdecError(f"layerskip:{n} needs 1 <= N < {target.cfg.n_layer} (the target's layers)")
                return SharedPagesDrafter(target, n, handoff=True)
            if kind == "int8":
                from specdec.models.int8 import quantize_gpt
                q = quantize_gpt(target, int(arg) if arg else None)
                return SharedPagesDrafter(q, q.cfg.n_layer, handoff=False)
            if kind == "ngram":
                return NgramDrafter(target.cfg.vocab_size, int(arg) if arg else 3)
        except ValueError:
            raise SpecdecError(f"bad draft spec {draft!r}: expected layerskip:N, int8[:N] or ngram[:N]") from None
        from specdec.models.checkpoint import load_gpt
        if is_eagle_file(draft):
            return EagleDrafter(load_eagle(draft, target.cfg), target)
        return GPTDrafter(load_gpt(draft), target)
    raise SpecdecError(f"unsupported draft {draft!r}")
