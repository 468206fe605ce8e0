"""Speculative decoding is exact: greedy token identity, batch invariance, no page leaks, equal distributions."""
import copy

import pytest
import torch
from scipy.stats import chi2_contingency

import specdec
from specdec import GPT, GPTConfig, Request, SamplingParams
import specdec.drafters
import specdec.engine
from specdec.engine import Engine
from specdec.errors import SpecdecError
from upstream import make_upstream_gpt, randomize_, upstream_generate

PV = 732


def tiny_gpt(n_layer=4, d=64, h=4, seed=0, eos_bias=0.0) -> GPT:
    gpt = GPT(GPTConfig(n_layer=n_layer, d_model=d, n_head=h, phoneme_vocab_size=PV))
    randomize_(gpt, seed, eos_bias)
    return gpt.eval()


def perturbed(gpt: GPT, scale: float, seed: int) -> GPT:
    """A draft close to the target: its own weights plus noise (acceptance well below 1)."""
    d = copy.deepcopy(gpt)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in d.parameters():
            p.add_(scale * p.abs().mean() * torch.randn(p.shape, generator=g))
    return d


@pytest.fixture(scope="module")
def target():
    return tiny_gpt(eos_bias=3.5)


def requests(n, seed=0, params=None, max_new=40):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        n_text = 5 + 7 * i
        prompt = None if i == 1 else torch.randint(0, 1024, (3 + 5 * i,), generator=g)
        out.append(Request(torch.randint(0, PV, (n_text,), generator=g), prompt,
                           params=params or SamplingParams(top_k=1, max_new_tokens=max_new, seed=i)))
    return out


def draft_kinds(target):
    return {"self": target, "gpt-2layer": tiny_gpt(2, 64, 4, seed=9), "layerskip:1": "layerskip:1",
            "layerskip:3": "layerskip:3", "ngram": "ngram"}


@pytest.mark.parametrize("batch", [1, 3])
def test_greedy_speculative_equals_greedy_autoregressive(target, batch):
    ref = Engine(target).generate(requests(batch))
    assert {o.finish_reason for o in ref} <= {"stop", "length"}
    for name, draft in draft_kinds(target).items():
        for k in range(1, 9):
            engine = Engine(target, draft, k=k)
            outs = engine.generate(requests(batch))
            for o, r in zip(outs, ref):
                assert torch.equal(o.tokens, r.tokens), (name, k)
                assert o.finish_reason == r.finish_reason
            assert engine.pool.num_free == engine.pool.num_blocks, (name, k)  # every page came back
    if batch == 3:
        assert any(o.finish_reason == "stop" for o in ref) and any(len(o.tokens) > 11 for o in ref)


def test_self_draft_accepts_almost_everything(target):
    out = Engine(target, target, k=4).generate(requests(1, params=SamplingParams(max_new_tokens=60, seed=3)))[0]
    st = out.stats
    assert st.num_drafts > 0 and st.draft_acceptance_rate > 0.9
    assert st.mean_acceptance_length > 4.0
    assert len(st.acceptance_per_position) == 4


def test_time_to_first_token_covers_the_prefill_and_precedes_the_end(target):
    out = Engine(target, "layerskip:1", k=2).generate(requests(1, params=SamplingParams(max_new_tokens=20, seed=0)))[0]
    st = out.stats
    assert 0 < st.prefill_s <= st.ttft_s < st.wall_s
    # the decode rounds happen after the first token: their pass times fit in what is left
    assert st.draft_s + st.verify_s <= st.wall_s - st.ttft_s


def test_latency_medians_per_request():
    from specdec.bench import latency
    from specdec.stats import SpecStats
    stats = [SpecStats(num_emitted_tokens=9, ttft_s=0.2, wall_s=1.0), SpecStats(num_emitted_tokens=5, ttft_s=0.5,
             wall_s=2.5), SpecStats(num_emitted_tokens=1, ttft_s=0.3, wall_s=0.3)]  # one token: no TPOT
    got = latency(stats)
    assert got["ttft_ms_median"] == pytest.approx(300.0)
    assert got["tpot_ms_median"] == pytest.approx(1e3 * (0.1 + 0.5) / 2)  # 0.8 s / 8 and 2.0 s / 4


def test_the_bench_samples_new_seeds_each_repeat_and_times_adaptive_k(target, monkeypatch):
    """Every contender meets the same seeds, new ones each call (acceptance is not measured on the same few samples
    again); with adaptive=True each draft also gets a row with k chosen per round."""
    from specdec import bench
    seen: dict[int, list] = {}
    generate = Engine.generate

    def spy(self, reqs):
        seen.setdefault(id(self), []).append(tuple(r.params.seed for r in reqs))
        return generate(self, reqs)
    monkeypatch.setattr(Engine, "generate", spy)
    reqs = requests(2, params=SamplingParams(max_new_tokens=8, seed=5))
    res = bench.spec_sweep(target, {"ngram": "ngram"}, [2], reqs, repeats=2, warmup=1, adaptive=True)
    assert [r["name"] for r in res["rows"]] == ["AR", "ngram k=2", "ngram adaptive k≤2"]
    assert len(seen) == 3 and all(s == [(5,), (5,), (1005,), (1005,), (2005,), (2005,)] for s in seen.values())


def test_an_impossible_draft_temperature_is_refused(target):
    for t in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(SpecdecError, match="draft_temperature"):
            Engine(target, target, draft_temperature=t)


@pytest.mark.parametrize("draft", ["layerskip:2", "ngram", "perturbed"])
def test_a_batch_gives_each_request_what_it_gets_alone(target, draft):
    draft = perturbed(target, 0.3, 1) if draft == "perturbed" else draft
    params = [SamplingParams(max_new_tokens=30, seed=s) for s in (11, 12, 13, 14)]
    reqs = [Request(r.phones, r.prompt, params=p) for r, p in zip(requests(4), params)]
    engine = Engine(target, draft, k=3)
    together = engine.generate(reqs)
    alone = [engine.generate([r])[0] for r in reqs]
    for a, b in zip(together, alone):
        assert torch.equal(a.tokens, b.tokens)


def test_a_drafter_serves_one_engine(target):
    """Its pages (or its view of the target's) live in one engine's pool: a second engine must not share it."""
    drafter = specdec.drafters.make_drafter("layerskip:2", target)
    first = Engine(target, drafter, k=2)
    with pytest.raises(specdec.SpecdecError, match="already serves another Engine"):
        Engine(target, drafter, k=4)
    del first  # once that engine is gone, the drafter is free again
    Engine(target, drafter, k=4)


def test_same_seed_same_tokens(target):
    engine = Engine(target, perturbed(target, 0.3, 2), k=4)
    r = requests(1, params=SamplingParams(max_new_tokens=40, seed=7))
    assert torch.equal(engine.generate(r)[0].tokens, engine.generate(r)[0].tokens)


# ---- distribution: speculative vs autoregressive at the upstream defaults ----------------------------------
N_SEEDS = 1500
POSITIONS = (1, 3, 6, 10, 13)
MAX_NEW = 18


def _sample_many(engine: Engine, phones, prompt, seed0: int):
    reqs = [Request(phones, prompt, params=SamplingParams(max_new_tokens=MAX_NEW, seed=seed0 + i))
            for i in range(N_SEEDS)]
    outs = []
    for i in range(0, N_SEEDS, 500):
        outs += engine.generate(reqs[i:i + 500])
    return [o.tokens.tolist() for o in outs]


def _repeats(s: list[int]) -> int:
    return sum(x == y for x, y in zip(s, s[1:]))


def _min_p_value(a: list[list[int]], b: list[list[int]]) -> float:
    """Two-sample χ² on each position's token histogram, on the lengths and on the number of adjacent repeats
    (what the repetition penalty shapes); rare values pooled into one bin."""
    ps = []
    for pos in POSITIONS:
        xs, ys = [s[pos] for s in a if len(s) > pos], [s[pos] for s in b if len(s) > pos]
        ps.append(_chi2(xs, ys))
    ps.append(_chi2([len(s) for s in a], [len(s) for s in b]))
    ps.append(_chi2([_repeats(s) for s in a], [_repeats(s) for s in b]))
    return min(ps)


def _chi2(xs, ys):
    keys = sorted(set(xs) | set(ys))
    counts = torch.tensor([[xs.count(k) for k in keys], [ys.count(k) for k in keys]], dtype=torch.float64)
    common = counts.sum(0) >= 10
    table = torch.cat([counts[:, common], counts[:, ~common].sum(1, keepdim=True)], 1)
    table = table[:, table.sum(0) > 0]
    return chi2_contingency(table.numpy())[1] if table.shape[1] > 1 else 1.0


def sticky_gpt() -> GPT:
    """A tiny target that likes to repeat itself, as speech tokens do (silences, steady vowels), so the
    repetition penalty shapes its output: tied head rows = scaled token embeddings. Its EOS logit follows the last
    LayerNorm's bias, which puts lengths all over 11..18."""
    t = tiny_gpt(n_layer=2, d=32, h=2, seed=5)
    with torch.no_grad():
        E = t.audio_embedding.weight
        head = 5.0 * E / E.norm(dim=1, keepdim=True)
        beta = t.layers[-1].norm2.bias
        beta.copy_(3.0 * beta / beta.norm())
        head[-1] = 12.0 * beta / beta.norm() ** 2
        t.head.weight.copy_(head)
    return t


@pytest.fixture(scope="module")
def dist_setup():
    target = sticky_gpt()
    g = torch.Generator().manual_seed(0)
    phones = torch.randint(0, PV, (9,), generator=g)
    greedy = specdec.generate(target, phones, torch.randint(0, 1024, (2,), generator=g), top_k=1,
                              max_new_tokens=12).tokens
    prompt = greedy[:8]  # the model's own likely tokens: the repetition penalty bites on the top candidates
    base = _sample_many(Engine(target), phones, prompt, seed0=0)
    return target, phones, prompt, base


ALPHA = 1e-3 / (len(POSITIONS) + 2)  # Bonferroni over the χ² tests of one comparison


@pytest.mark.parametrize("draft", ["self", "perturbed", "perturbed-adaptive", "layerskip:1", "ngram", "eagle",
                                   "eagle-cold"])
def test_speculative_sampling_has_the_autoregressive_distribution(dist_setup, draft):
    target, phones, prompt, base = dist_setup
    d = perturbed(eagle_copy_of(target), 0.05, 5) if "eagle" in draft else {"self": target}.get(
        draft, perturbed(target, 0.05, 3) if "perturbed" in draft else draft)  # perturbed: α ≈ 0.55
    kw = dict(adaptive=True, draft_threshold=0.2) if "adaptive" in draft else {}
    if draft == "eagle-cold":  # the draft samples at half the temperature: q must be what it sampled from
        kw = dict(draft_temperature=0.5)
    spec = _sample_many(Engine(target, d, k=4, **kw), phones, prompt, seed0=10**6)  # disjoint seeds
    assert _min_p_value(base, spec) > ALPHA


def test_the_distribution_test_detects_a_wrong_q(dist_setup, monkeypatch):
    """Power check: a drafter that samples from its warped distribution but reports its raw softmax as q (the
    transformers#47932 bug) must be caught by the same test at the same sample size."""
    target, phones, prompt, base = dist_setup
    real = specdec.drafters._sample_drafts

    def buggy(seqs, logits, drafts):
        tokens, _ = real(seqs, logits, drafts)
        return tokens, torch.softmax(logits.float(), -1)

    monkeypatch.setattr(specdec.drafters, "_sample_drafts", buggy)
    wrong = _sample_many(Engine(target, perturbed(target, 0.05, 3), k=4), phones, prompt, 10**6)
    assert _min_p_value(base, wrong) < ALPHA


def test_the_distribution_test_detects_a_verifier_that_forgets_earlier_drafts(dist_setup, monkeypatch):
    """Power check: position i's repetition penalty must include drafts 1..i-1; a verifier that penalises only
    the committed history is caught."""
    target, phones, prompt, base = dist_setup
    monkeypatch.setattr(specdec.engine.cpu, "available", lambda: False)  # the torch verifier (C: test_cpu_accept)
    monkeypatch.setattr(specdec.engine, "seen_block", lambda seen, drafts: seen.expand(len(drafts) + 1, -1))
    wrong = _sample_many(Engine(target, target, k=4), phones, prompt, 10**6)
    assert _min_p_value(base, wrong) < ALPHA


def test_the_distribution_test_detects_a_missing_penalty(dist_setup):
    target, phones, prompt, base = dist_setup
    reqs_free = Engine(target)
    outs = []
    for i in range(0, N_SEEDS, 500):
        outs += reqs_free.generate([Request(phones, prompt, params=SamplingParams(
            max_new_tokens=MAX_NEW, seed=2 * 10**6 + i + j, repetition_penalty=1.0)) for j in range(500)])
    assert _min_p_value(base, [o.tokens.tolist() for o in outs]) < ALPHA


# ---- install(): an upstream model patched in place ---------------------------------------------------------
@pytest.mark.parametrize("draft,draft_temperature", [(None, None), ("layerskip:1", None), ("ngram", None),
                                                     ("layerskip:1", 0.5)])
def test_install_keeps_upstream_tokens_and_contract(draft, draft_temperature):
    up, _ = make_upstream_gpt(3, 64, 4, PV, seed=4, eos_bias=1.2)
    g = torch.Generator().manual_seed(1)
    phones, prompt = torch.randint(0, PV, (20,), generator=g), torch.randint(0, 1024, (12,), generator=g)
    cases = [(1, 0, -1), (1, 0, 25), (15, 1, 60)] if draft is None else [(1, 0, -1), (1, 0, 25)]
    refs = []
    for top_k, seed, esn in cases:
        torch.manual_seed(seed)
        refs.append(up.infer_panel(phones[None], torch.tensor([20]), prompt[None], torch.zeros(1, 1024, 20),
                                   top_k=top_k, early_stop_num=esn))
    free_ref = upstream_generate(up, phones, None, top_k=1, early_stop_num=30)[0]
    specdec.install(up, draft=draft, k=3, draft_temperature=draft_temperature)
    for (top_k, seed, esn), (y_ref, idx_ref) in zip(cases, refs):
        torch.manual_seed(seed)
        y, idx = up.infer_panel(phones[None], torch.tensor([20]), prompt[None], torch.zeros(1, 1024, 20),
                                top_k=top_k, early_stop_num=esn)
        assert torch.equal(y, y_ref) and idx == idx_ref, (top_k, seed, esn)
    assert torch.equal(upstream_generate(up, phones, None, top_k=1, early_stop_num=30)[0], free_ref)


@pytest.mark.parametrize("mode", ["adaptive", "threshold", "draft temperature"])
def test_adaptive_draft_length_stays_exact(target, mode):
    ref = Engine(target).generate(requests(3))
    kw = {"adaptive": {"adaptive": True}, "threshold": {"draft_threshold": 0.5},
          "draft temperature": {"draft_temperature": 0.6}}[mode]
    for draft in [perturbed(target, 0.3, 4), "layerskip:2"]:
        outs = Engine(target, draft, k=6, **kw).generate(requests(3))
        for o, r in zip(outs, ref):
            assert torch.equal(o.tokens, r.tokens)


def test_adaptive_k_follows_acceptance():
    from specdec.adaptive import Costs, choose_k
    costs = Costs(warm=True)  # synthetic timings: no first-round costs to skip
    for k in (1, 4, 8):
        costs.observe(k, draft_s=0.002 * k, verify_s=0.010 + 0.001 * k)
    assert choose_k(0.95, costs, 8) == 8  # a draft that is almost always right: draft long
    assert choose_k(0.35, costs, 8) == 1  # a draft that is mostly wrong: draft one token
    assert 1 < choose_k(0.7, costs, 8) < 8
    assert choose_k(0.1, costs, 8) == 0  # one that saves less than its step costs: plain decoding
    costs.observe(1, draft_s=0.2, verify_s=0.011)  # draft steps dearer than a target pass (a tiny target)
    assert choose_k(0.7, costs, 8) == 0


def test_the_policy_skips_first_round_costs_and_starts_sequences_from_the_engines_acceptance():
    """An engine's first round packs weights and builds kernels: timing it would make its k look dear for good.
    A new sequence starts from the engine's running α (as two pseudo-observations), not from 0.5."""
    from specdec.adaptive import Acceptance, Costs
    costs = Costs()
    costs.observe(4, draft_s=1.0, verify_s=1.0)
    assert costs.draft_token_s is None and not costs.verify_s
    costs.observe(4, draft_s=0.004, verify_s=0.01)
    assert costs.verify_s == {4: 0.01} and costs.draft_token_s == pytest.approx(0.001)
    seen = Acceptance()
    for _ in range(20):
        seen.update(4, 4)
    prior = seen.prior()
    assert prior.alpha == pytest.approx(seen.alpha) and prior.alpha > 0.9
    assert prior.accepted + prior.rejected == pytest.approx(2.0)


def test_a_sequence_that_stopped_drafting_probes_now_and_then(target):
    """With drafting too dear the adaptive engine decodes plainly, yet drafts one token every PROBE_EVERY rounds
    to keep its acceptance estimate current; the tokens stay the greedy ones."""
    from specdec.adaptive import PROBE_EVERY, Costs

    class DearDrafts(Costs):
        def observe(self, k, draft_s, verify_s):
            super().observe(k, 0.05 * k, verify_s)  # as if every draft step took 50 ms

    engine = Engine(target, "layerskip:2", k=4, adaptive=True)
    engine.costs = DearDrafts()
    req = requests(1, params=SamplingParams(top_k=1, max_new_tokens=40, seed=0))
    out = engine.generate(req)[0]
    assert torch.equal(out.tokens, Engine(target).generate(req)[0].tokens)
    n = out.tokens.numel()
    assert out.stats.num_drafts <= 2 + n // PROBE_EVERY  # the first round (costs unknown), then probes only
    if n > 5 + PROBE_EVERY:
        assert out.stats.num_drafts >= 2  # at least one probe


def test_streamed_tokens_add_up_to_the_generated_ones(target):
    engine = Engine(target, "layerskip:2", k=3)
    reqs = requests(3, params=SamplingParams(max_new_tokens=30, seed=5))
    ref = engine.generate(reqs)
    got = {i: [] for i in range(3)}
    run = engine.stream(reqs)
    chunks = 0
    while True:
        try:
            i, toks = next(run)
        except StopIteration as e:
            outs = e.value
            break
        assert toks
        got[i] += toks
        chunks += 1
    assert chunks > 3
    for i, o in enumerate(outs):
        assert got[i] == o.tokens.tolist() == ref[i].tokens.tolist()
    partial = engine.stream(reqs)
    next(partial)
    partial.close()  # a consumer that stops early still returns every page
    assert engine.pool.num_free == engine.pool.num_blocks


# ---- EAGLE-style feature drafts ------------------------------------------------------------------------------
def eagle_copy_of(target):
    """An EAGLE draft that ignores h_prev and runs copies of all the target's blocks: it *is* the target, so
    near-full acceptance proves that positions, catch-up and K/V pages line up."""
    from specdec.models.eagle import EagleConfig, EagleDraft
    c = target.cfg
    e = EagleDraft(EagleConfig(d_model=c.d_model, n_layer=c.n_layer, n_head=c.n_head))
    with torch.no_grad():
        e.fc.weight.zero_()
        e.fc.weight[:, c.d_model:] = torch.eye(c.d_model)
        e.fc.bias.zero_()
        for mine, theirs in zip(e.layers, target.layers):
            mine.load_state_dict(theirs.state_dict())
    return e.eval()


def test_eagle_drafts_are_exact_and_line_up(target):
    from specdec.models.eagle import EagleConfig, EagleDraft
    ref = Engine(target).generate(requests(3))
    random_eagle = EagleDraft(EagleConfig(d_model=64, n_layer=1, n_head=4)).eval()
    for draft in (random_eagle, eagle_copy_of(target)):
        for k in (1, 3, 6):
            outs = Engine(target, draft, k=k).generate(requests(3))
            for o, r in zip(outs, ref):
                assert torch.equal(o.tokens, r.tokens)
    st = Engine(target, eagle_copy_of(target), k=4).generate(
        requests(1, params=SamplingParams(max_new_tokens=60, seed=3)))[0].stats
    assert st.draft_acceptance_rate > 0.9


def test_eagle_sees_the_targets_hidden_states(target):
    """After generation, every stored h equals the target's last-layer state at that position (dense rerun)."""
    from specdec.drafters import EagleDrafter
    from specdec.models.gpt import prefix_lm_mask
    drafter = EagleDrafter(eagle_copy_of(target), target)
    r = requests(1, params=SamplingParams(max_new_tokens=25, seed=4))[0]
    out = Engine(target, drafter, k=3).generate([r])[0]
    store = next(iter(drafter._h.values()))
    y = torch.cat([r.prompt, out.tokens])
    with torch.no_grad():
        x = torch.cat([target.embed_text(r.phones), target.embed_audio(y, torch.arange(len(y)))])[None]
        T = x.shape[1]
        h = target.forward_dense(x, prefix_lm_mask(torch.tensor([r.phones.numel()]), torch.tensor([T]), T))[0]
    assert store and all(torch.allclose(v, h[pos], atol=1e-4) for pos, v in store.items() if pos < T)
