"""The engine's accept step in C (kernels/cpu.c `accept_round`) against the torch reference (specdec.sampling warp +
accept) on random rounds: the same random numbers must give the same verdicts, for every sampling setting, EOS ban
and stop rule, ragged draft counts and one-hot (ngram) or warped (model) draft distributions."""
import random
from types import SimpleNamespace

import pytest
import torch

from specdec.drafters import Proposal
from specdec.engine import Engine
from specdec.kernels import cpu
from specdec.sampling import MIN_STEPS_BEFORE_EOS, SamplingParams, warp

pytestmark = pytest.mark.skipif(not cpu.available(), reason="no AVX2/F16C CPU or no C compiler")

PARAMS = [SamplingParams(), SamplingParams(top_k=5, top_p=0.8, temperature=0.7),
          SamplingParams(top_k=None, top_p=0.6, temperature=1.3, repetition_penalty=1.0),
          SamplingParams(top_k=1), SamplingParams(top_k=50, top_p=0.95, temperature=0.0, repetition_penalty=1.1)]


def _round(rng: random.Random, g: torch.Generator, V: int):
    """Sequences in random states, their proposals and the target's logits for the round (drafts are often the
    target's likely tokens, so accepts, rejections and stops all happen)."""
    seqs, proposals, rows = [], [], []
    for _ in range(rng.randint(1, 4)):
        params = rng.choice(PARAMS)
        n_gen = rng.choice([1, 5, MIN_STEPS_BEFORE_EOS - 2, MIN_STEPS_BEFORE_EOS, 40])
        k = rng.randint(0, 6)
        logits = torch.randn(k + 1, V, generator=g) * 3
        if rng.random() < 0.3:
            logits[rng.randrange(k + 1), -1] += 8  # EOS likely somewhere
        seen = torch.rand(V, generator=g) < 0.2
        if rng.random() < 0.5:  # one-hot drafts from the target's argmax (an ngram draft)
            drafts = [int(logits[i, :-1].argmax()) for i in range(k)]
            q = torch.zeros(k, V)
            q[torch.arange(k), drafts] = 1.0
        else:  # a model draft: warped noisy logits, sampled
            q, _ = warp(logits[:k] + torch.randn(k, V, generator=g), seen.expand(k, V),
                        torch.zeros(k, dtype=torch.bool), params)
            drafts = [int(torch.multinomial(q[i], 1, generator=g)) for i in range(k)]
        s = SimpleNamespace(generated=[0] * n_gen, seen=seen, request=SimpleNamespace(params=params),
                            generator=torch.Generator().manual_seed(rng.randrange(9**9)))
        seqs.append(s)
        proposals.append(Proposal(drafts, q if k else None))
        rows.append(logits)
    return seqs, proposals, torch.cat(rows)


def test_c_accept_gives_the_torch_verdicts():
    rng, g, V = random.Random(0), torch.Generator().manual_seed(0), 85
    engine = Engine.__new__(Engine)
    engine.target = SimpleNamespace(cfg=SimpleNamespace(eos=V - 1))
    kinds = set()
    for _ in range(400):
        seqs, proposals, logits = _round(rng, g, V)
        states = [s.generator.get_state() for s in seqs]
        ref = Engine._verdicts_torch(engine, seqs, logits, proposals, Engine._bans(seqs, proposals))
        for s, st in zip(seqs, states):
            s.generator.set_state(st)
        got = Engine._verdicts_cpu(engine, seqs, logits, proposals)
        assert got == ref
        kinds |= {("stop" if v.stopped else "go", v.num_accepted == len(p.drafts)) for v, p in zip(ref, proposals)}
    assert kinds == {("stop", True), ("stop", False), ("go", True), ("go", False)}


def test_c_accept_refuses_a_broken_draft():
    V = 85
    s = SimpleNamespace(generated=[0] * 20, seen=torch.zeros(V, dtype=torch.bool), generator=torch.Generator(),
                        request=SimpleNamespace(params=SamplingParams()))
    q = torch.full((2, V), float("nan"))
    with pytest.raises(RuntimeError, match="non-finite"):
        Engine._verdicts_cpu(Engine.__new__(Engine), [s], torch.randn(3, V), [Proposal([3, 4], q)])
