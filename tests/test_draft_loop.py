"""The C drafting loop (kernels/cpu.c `draft_loop`) against the torch loop it replaces: same proposals (tokens, q,
hidden states, draft state) when both draw the same tokens, greedy identity through the engine, and the sampled
distribution at the upstream defaults. Test targets have fp16-exact weights (as checkpoints do), which is what
lets the CPU kernels run them."""
import dataclasses

import pytest
import torch

import specdec.drafters
from specdec import Request, SamplingParams
from specdec.drafters import EagleDrafter, SharedPagesDrafter, make_drafter
from specdec.engine import Engine
from specdec.kernels import cpu
from specdec.models.int8 import quantize_eagle
from test_spec import ALPHA, _min_p_value, _sample_many, eagle_copy_of, perturbed, requests, sticky_gpt, tiny_gpt

pytestmark = pytest.mark.skipif(not cpu.available(), reason="no AVX2/F16C CPU or no C compiler")


def fp16_exact(model):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


@pytest.fixture(scope="module")
def target():
    return fp16_exact(tiny_gpt(eos_bias=3.5))


def drafts_for(target):
    eagle = fp16_exact(perturbed(eagle_copy_of(target), 0.2, 5))
    return {"gpt": fp16_exact(tiny_gpt(2, 64, 4, seed=9)), "eagle": eagle, "eagle-int8": quantize_eagle(eagle),
            "int8": "int8", "layerskip:2": "layerskip:2"}


def _state(drafter, seqs):
    return [(s.draft_len, s.generator.get_state(), getattr(drafter, "_next", {}).get(id(s))) for s in seqs]


def _restore(drafter, seqs, state):
    for s, (n, g, nxt) in zip(seqs, state):
        s.draft_len = n
        s.generator.set_state(g)
        if nxt is not None:
            drafter._next[id(s)] = nxt


def checked(drafter, log: list):
    """Wrap drafter.propose: every round runs the C loop, then again the torch loop made to draw the C loop's
    tokens from the same state; proposals and draft state must agree. Logs the drafts checked."""
    real = drafter.propose

    def propose(engine, seqs, ks):
        before = _state(drafter, seqs)
        fused = real(engine, seqs, ks)
        after = _state(drafter, seqs)
        _restore(drafter, seqs, before)
        forced = {id(s): p.drafts for s, p in zip(seqs, fused)}
        sample = specdec.drafters._sample_drafts

        def forcing(active, logits, drafts):
            _, q = sample(active, logits, drafts)
            return [forced[id(s)][len(d)] for s, d in zip(active, drafts)], q

        drafter._loop = lambda *a: None
        specdec.drafters._sample_drafts = forcing
        try:
            ref = real(engine, seqs, ks)
        finally:
            del drafter._loop
            specdec.drafters._sample_drafts = sample
        for f, r in zip(fused, ref):
            assert f.drafts == r.drafts
            assert (f.q is None) == (r.q is None) and (f.q is None or torch.allclose(f.q, r.q, atol=1e-5))
            assert (f.hidden is None) == (r.hidden is None)
            assert f.hidden is None or torch.allclose(f.hidden, r.hidden, atol=1e-4)
        assert [a[0::2] for a in after] == [a[0::2] for a in _state(drafter, seqs)]
        _restore(drafter, seqs, after)
        log.append(sum(len(p.drafts) for p in fused))
        return fused

    drafter.propose = propose
    return drafter


PARAMS = {"defaults": SamplingParams(max_new_tokens=40),
          "top_p-T-top_k": SamplingParams(top_k=5, top_p=0.8, temperature=0.7, repetition_penalty=1.35,
                                          max_new_tokens=40)}


@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("kind", ["gpt", "eagle", "eagle-int8", "int8", "layerskip:2"])
def test_the_c_loop_proposes_what_the_torch_loop_would(target, kind, params):
    drafter = make_drafter(drafts_for(target)[kind], target)
    log = []
    engine = Engine(target, checked(drafter, log), k=5)
    reqs = [Request(r.phones, r.prompt, params=dataclasses.replace(PARAMS[params], seed=i))
            for i, r in enumerate(requests(3))]
    engine.generate(reqs)
    assert len(log) > 3 and sum(log) > 20  # the C loop ran and drafted
    assert engine.pool.num_free == engine.pool.num_blocks


@pytest.mark.parametrize("batch", [1, 3])
def test_greedy_through_the_c_loop_equals_greedy_autoregressive(target, batch, monkeypatch):
    calls = []
    real = cpu.DraftLoop.__call__
    monkeypatch.setattr(cpu.DraftLoop, "__call__", lambda self, *a: calls.append(1) or real(self, *a))
    ref = Engine(target).generate(requests(batch))
    for name, draft in drafts_for(target).items():
        for k in range(1, 9):
            engine = Engine(target, draft, k=k)
            for o, r in zip(engine.generate(requests(batch)), ref):
                assert torch.equal(o.tokens, r.tokens), (name, k)
                assert o.finish_reason == r.finish_reason
            assert engine.pool.num_free == engine.pool.num_blocks
    assert len(calls) > 100


def test_a_batch_through_the_c_loop_gives_each_request_what_it_gets_alone(target):
    reqs = [Request(r.phones, r.prompt, params=SamplingParams(max_new_tokens=30, seed=s))
            for r, s in zip(requests(4), (11, 12, 13, 14))]
    engine = Engine(target, drafts_for(target)["eagle"], k=3)
    together = engine.generate(reqs)
    for r, a in zip(reqs, together):
        assert torch.equal(a.tokens, engine.generate([r])[0].tokens)


@pytest.mark.parametrize("draft", ["eagle", "int8"])
def test_sampling_through_the_c_loop_has_the_autoregressive_distribution(draft):
    target = fp16_exact(sticky_gpt())
    g = torch.Generator().manual_seed(0)
    phones = torch.randint(0, 732, (9,), generator=g)
    prompt = torch.randint(0, 1024, (8,), generator=g)
    d = fp16_exact(perturbed(eagle_copy_of(target), 0.05, 5)) if draft == "eagle" else draft
    drafter = make_drafter(d, target)
    assert isinstance(drafter, (EagleDrafter, SharedPagesDrafter))
    base = _sample_many(Engine(target), phones, prompt, seed0=0)
    spec = _sample_many(Engine(target, drafter, k=4), phones, prompt, seed0=10**6)
    assert drafter._fused is not None  # drafted in C
    assert _min_p_value(base, spec) > ALPHA


@pytest.mark.parametrize("loop", ["C", "torch"])
def test_the_draft_temperature_reaches_the_drafting_loop(target, monkeypatch, loop):
    """The target as its own draft accepts nearly everything at its own temperature and far less when it drafts at
    a fifth of it: the setting must reach both drafting loops (the output stays exact either way)."""
    fused = []
    real = specdec.drafters._ModelDrafter._draft_fused
    monkeypatch.setattr(specdec.drafters._ModelDrafter, "_draft_fused",
                        lambda self, *a: fused.append(1) or real(self, *a))
    if loop == "torch":
        monkeypatch.setattr(specdec.drafters._ModelDrafter, "_loop", lambda self, engine: None)
    reqs = requests(1, params=SamplingParams(max_new_tokens=60, seed=3))
    rates = [Engine(target, target, k=4, draft_temperature=t).generate(reqs)[0].stats.draft_acceptance_rate
             for t in (1.0, 0.2)]
    assert bool(fused) == (loop == "C")
    assert rates[0] > 0.9 and rates[1] < rates[0] - 0.2, rates
