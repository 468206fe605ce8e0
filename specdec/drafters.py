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

import weakref
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING

import torch

from specdec.cache import PagePool
from specdec.errors import SpecdecError
from specdec.kernels import AttentionMetadata, cpu
from specdec.models.gpt import GPT, Blocks
from specdec.models.linear import Linear
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
    engine: "weakref.ref[Engine] | None" = None  # the one Engine it serves (set by the Engine)
    temperature = 1.0  # its own sampling temperature ÷ the request's, unless the Engine is given one

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
    """Warp the draft's logits [B, V] as the target's would be at these positions (one batched call; at the engine's
    draft temperature), sample one token per sequence, and return the tokens with the distributions they came
    from."""
    seen = torch.stack([s.seen for s in seqs])
    for i, d in enumerate(drafts):
        if d:
            seen[i, d] = True
    ban = [len(s.generated) + len(d) < MIN_STEPS_BEFORE_EOS for s, d in zip(seqs, drafts)]
    q, _ = warp(logits, seen, torch.tensor(ban), [s.draft_params for s in seqs])
    tokens = [race(q[i], exponential_noise(b, q.shape[-1], s.generator)) for i, (s, b) in enumerate(zip(seqs, ban))]
    return tokens, q


class _ModelDrafter(Drafter):
    """Shared drafting loop of model-based drafters: feed tokens, sample from the exit logits, repeat. On CPU, where
    the draft's weights are packed for the C kernels, the whole loop is one call (kernels/cpu.c `draft_loop`: no
    Python per draft step, which cost ~0.6 ms on the demo pair against ~0.07 ms of arithmetic); the torch loop is its
    reference and the path everywhere else. The two sample differently from the same seed (each is exact)."""

    blocks: Blocks  # the draft's blocks, run over `self.kv` up to layer `end`
    end: int | None = None
    head: Linear  # exit logits
    fc: Linear | None = None  # EAGLE's input projection
    embedder: GPT  # whose audio embedding feeds drafted tokens
    handoff = False  # keep each fed row's block output for the verifier (layerskip)
    kv: list
    _fused: tuple | None = None  # (kernel plan, head pack, fc pack, cpu.DraftLoop)

    def _rows(self, seqs: list["Sequence"], feeds: list[list[int]]
              ) -> tuple[list[int], list[int], torch.Tensor | None, list[int]]:
        """The rows that feed `feeds` (each ending at its sequence's newest position): their tokens, sequence
        positions, EAGLE's preceding hidden states [T, d] (None for other drafts) and rows per sequence; advances
        each sequence's draft state past them."""
        raise NotImplementedError

    def _inputs(self, engine: "Engine", seqs: list["Sequence"], feeds: list[list[int]]
                ) -> tuple[torch.Tensor, AttentionMetadata, list[int]]:
        """The draft blocks' input rows [T, d] for `feeds` (see _rows), their metadata and rows per sequence."""
        tokens, positions, h_prev, lens = self._rows(seqs, feeds)
        audio = [s.audio_position(p) for s, n, e in zip(seqs, lens, accumulate(lens)) for p in positions[e - n:e]]
        x = self.embedder.embed_audio(torch.tensor(tokens), torch.tensor(audio))
        if h_prev is not None:
            x = self.fc(torch.cat([h_prev, x], dim=-1))
        return x, engine.meta(seqs, lens, [positions[e - 1] + 1 for e in accumulate(lens)]), lens

    def _fed(self, seqs: list["Sequence"], last: torch.Tensor) -> None:
        """After a torch-loop step: each sequence's newest block output, last [B, d]."""

    def _advance(self, s: "Sequence", end: int) -> None:
        s.draft_len = end  # the draft now holds K/V up to `end` (exclusive)

    def _step(self, engine: "Engine", seqs: list["Sequence"], feeds: list[list[int]]) -> torch.Tensor:
        """Feed tokens through the draft; returns [B, d] last rows."""
        x, meta, lens = self._inputs(engine, seqs, feeds)
        h = self.blocks.forward(x, meta, self.kv, 0, self.end)
        last = h[torch.tensor(lens).cumsum(0) - 1]
        self._fed(seqs, last)
        return last

    def _draft(self, engine: "Engine", seqs: list["Sequence"], ks: list[int]):
        """Up to ks[i] drafts per sequence → (drafts, q) keyed by id(sequence): the tokens and the [n, V]
        distributions they were sampled from (None when the sequence drafted nothing)."""
        loop = self._loop(engine)
        if loop is not None:
            return self._draft_fused(engine, seqs, ks, loop)
        eos = engine.target.cfg.eos
        drafts = {id(s): [] for s in seqs}
        qs = {id(s): [] for s in seqs}
        active = [s for s, k in zip(seqs, ks) if k > 0]
        kmax = dict(zip(map(id, seqs), ks))
        feeds = [self._catch_up(s) for s in active]
        while active:
            h = self._step(engine, active, feeds)
            tokens, q = _sample_drafts(active, self.head.forward(h), [drafts[id(s)] for s in active])
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

    def _loop(self, engine: "Engine") -> "cpu.DraftLoop | None":
        """The C drafting loop for this draft, or None where it cannot run (no kernels, another backend, weights
        not packed for them)."""
        if (engine.backend != "torch" or not self.kv
                or self.embedder.audio_embedding.weight.dtype != torch.float32):
            return None
        plan = self.blocks.cpu_plan(self.kv, 0, self.end)
        head = self.head.cpu_pack()
        fc = None if self.fc is None else self.fc.cpu_pack()
        if plan is None or head is None or (self.fc is not None and fc is None):
            return None
        cached = self._fused
        if cached is None or cached[0] is not plan or cached[1] is not head or cached[2] is not fc:
            cached = self._fused = (plan, head, fc, cpu.DraftLoop(plan, head, fc))
        return cached[3]

    def _draft_fused(self, engine: "Engine", seqs: list["Sequence"], ks: list[int], loop: "cpu.DraftLoop"):
        drafts: dict = {id(s): [] for s in seqs}
        qs: dict = {id(s): None for s in seqs}
        run = [(s, k) for s, k in zip(seqs, ks) if k > 0 or self.handoff]
        if not run:
            return drafts, qs
        rs = [s for s, _ in run]
        tokens0, positions0, h0, lens = self._rows(rs, [self._catch_up(s) for s in rs])
        rows0 = torch.tensor([tokens0, positions0, [b for b, n in enumerate(lens) for _ in range(n)]])
        V, K = engine.target.cfg.vocab_size, max(1, max(k for _, k in run))
        apos = [s.audio_position(s.pending_pos) for s in rs]
        emb = self.embedder
        pe = emb.position_table(max(apos) + K + 1)  # covering every drafted position
        noise = torch.ones(len(rs), K, V)
        for i, (s, k) in enumerate(run):
            if k:
                noise[i, :k].exponential_(generator=s.generator)
        width = max(len(s.table.blocks) for s in rs)
        block_table = torch.tensor([s.table.blocks + [0] * (width - len(s.table.blocks)) for s in rs],
                                   dtype=torch.int32)
        per_seq = torch.tensor([[n - 1 for n in accumulate(lens)], [s.pending_pos for s in rs], apos,
                                [k for _, k in run], [max(0, MIN_STEPS_BEFORE_EOS - len(s.generated)) for s in rs]])
        threshold = -1.0 if engine.draft_threshold is None else engine.draft_threshold
        tokens, q, hidden, n = loop(rows0, h0, per_seq, block_table, emb.audio_embedding.weight, pe,
                                    float(emb.audio_alpha), [s.draft_params for s in rs],
                                    torch.stack([s.seen for s in rs]), noise, threshold, self.handoff)
        for i, (s, t, m) in enumerate(zip(rs, tokens.tolist(), n.tolist())):
            drafts[id(s)] = t[:m]
            qs[id(s)] = q[i, :m] if m else None
            self._advance(s, s.pending_pos + m + self.handoff)
            if self.handoff:
                self._hidden[id(s)] = [hidden[i, :m + 1]]
        return drafts, qs

    def _catch_up(self, s: "Sequence") -> list[int]:
        """Tokens the draft has not seen yet, ending with the pending token."""
        first_gen = s.prefix_len + s.prompt_len
        return [s.generated[p - first_gen] for p in range(s.draft_len, s.pending_pos + 1)]


class GPTDrafter(_ModelDrafter):
    def __init__(self, model: GPT, target: GPT):
        if (model.cfg.vocab_size, model.cfg.phoneme_vocab_size) != (target.cfg.vocab_size,
                                                                     target.cfg.phoneme_vocab_size):
            raise SpecdecError(f"draft vocabularies ({model.cfg.phoneme_vocab_size} phones, {model.cfg.vocab_size} "
                               f"tokens) differ from the target's ({target.cfg.phoneme_vocab_size}, "
                               f"{target.cfg.vocab_size})")
        self.model = self.embedder = model.eval()
        self.blocks, self.head = model.layers, model.head
        self.kv: list = []
        self.temperature = model.draft_temperature  # what its distillation measured

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

    def _rows(self, seqs, feeds):
        lens = [len(f) for f in feeds]
        ends = [s.draft_len + n for s, n in zip(seqs, lens)]
        positions = [p for e, n in zip(ends, lens) for p in range(e - n, e)]
        for s, e in zip(seqs, ends):
            self._advance(s, e)
        return [t for f in feeds for t in f], positions, None, lens

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
        self.model = self.embedder = model
        self.blocks, self.head, self.end = model.layers, model.head, n_layers
        self.n, self.handoff = n_layers, handoff
        self.kv: list = []
        self._hidden: dict[int, list[torch.Tensor]] = {}  # per sequence: block outputs of the fed rows, in order

    def bind(self, pool, target_kv):
        self.kv = target_kv  # the very pages of the target's first N layers

    def _rows(self, seqs, feeds):
        # always one token per sequence: the draft's K/V never lags the target's (they are the same pages)
        positions = [s.draft_len for s in seqs]
        for s, p in zip(seqs, positions):
            self._advance(s, p + 1)
        return [f[-1] for f in feeds], positions, None, [1] * len(seqs)

    def _fed(self, seqs, last):
        if self.handoff:
            for i, s in enumerate(seqs):
                self._hidden[id(s)].append(last[i:i + 1])

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
        tails = [s for s in seqs if sum(len(h) for h in self._hidden[id(s)]) == len(drafts[id(s)])]
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
        self.blocks, self.fc, self.head, self.embedder = model.layers, model.fc, target.head, target
        self.temperature = model.draft_temperature  # what its distillation measured
        self.kv: list = []
        self._h: dict[int, dict[int, torch.Tensor]] = {}  # per sequence: position → target hidden state [d]
        self._next: dict[int, int] = {}  # per sequence: the position the next draft step writes
        self._hat: dict[int, torch.Tensor] = {}  # per sequence: the draft's last ĥ (stands in for an unverified h)

    def bind(self, pool, target_kv):
        c = self.model.cfg
        self.kv = pool.new_kv(c.n_layer, c.n_head, c.head_dim, self.target.dtype, self.target.device)

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

    def _rows(self, seqs, feeds):
        h_prev, positions = [], []
        for s, f in zip(seqs, feeds):
            p0, store = self._next[id(s)], self._h[id(s)]
            for t in range(p0, p0 + len(f)):
                h_prev.append(store[t - 1] if t - 1 in store else self._hat[id(s)][0])
                positions.append(t)
            self._advance(s, p0 + len(f))
        return [t for f in feeds for t in f], positions, torch.stack(h_prev), [len(f) for f in feeds]

    def _advance(self, s, end):
        self._next[id(s)] = end
        s.draft_len = min(end, s.pending_pos + 1)  # only positions fed true hidden states count as seen

    def _fed(self, seqs, last):
        for i, s in enumerate(seqs):
            self._hat[id(s)] = last[i:i + 1]

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


def int8_copy_of_target(spec: str) -> bool:
    """Whether a draft spec is an int8 copy of the target itself ("int8", "int8:N"), not of a draft file."""
    kind, _, arg = spec.partition(":")
    return kind == "int8" and (not arg or arg.isdigit())


def make_drafter(draft, target: GPT) -> Drafter | None:
    """None | Drafter | GPT | EagleDraft | path to either | "layerskip:N" | "int8" | "int8:N" | "int8:PATH" | "ngram"
    | "ngram:N" → a Drafter. "int8:PATH" is an int8 copy of the draft in that file; a quantised GPT
    (specdec.models.int8.quantize_gpt) drafts like any other."""
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
                from specdec.models.int8 import quantize_draft, quantize_gpt
                if not int8_copy_of_target(draft):  # a draft file's int8 copy
                    d = make_drafter(arg, target)
                    if not isinstance(d, (GPTDrafter, EagleDrafter)):
                        raise SpecdecError(f"int8:{arg}: expected a GPT or EAGLE draft file")
                    return make_drafter(quantize_draft(d.model), target)
                q = quantize_gpt(target, int(arg) if arg else None)
                return SharedPagesDrafter(q, q.cfg.n_layer, handoff=False)
            if kind == "ngram":
                return NgramDrafter(target.cfg.vocab_size, int(arg) if arg else 3)
        except ValueError:
            raise SpecdecError(f"bad draft spec {draft!r}: expected layerskip:N, int8[:N|:FILE] or ngram[:N]") from None
        from specdec.models.checkpoint import load_gpt
        if is_eagle_file(draft):
            return EagleDrafter(load_eagle(draft, target.cfg), target)
        return GPTDrafter(load_gpt(draft), target)
    raise SpecdecError(f"unsupported draft {draft!r}")
