"""The upstream warper chain, and the speculative accept/resample step's distribution."""
import itertools
from collections import Counter

import pytest
import torch
from scipy.stats import chisquare

from specdec.sampling import SamplingParams, accept, seen_block, warp
from specdec.errors import SpecdecError
from upstream import require_upstream

V = 1025


def _upstream_probs(logits, prev, ban_eos, **kw):
    require_upstream()
    from AR.models.utils import logits_to_probs
    x = logits.clone()[None]
    if ban_eos:
        x = x[:, :-1]  # upstream slices EOS off for the first 11 steps
    probs = logits_to_probs(x, prev[None] if prev.numel() else None, **kw)[0]
    argmax_eos = bool(x.argmax() == V - 1)  # upstream's stop test runs on the logits its penalty modified in place
    return torch.cat([probs, torch.zeros(1)]) if ban_eos else probs, argmax_eos


@pytest.mark.parametrize("top_k,top_p,temperature,rp", [(15, 1.0, 1.0, 1.35), (5, 0.8, 0.7, 1.35),
                                                        (None, 0.6, 1.3, 1.0), (1, 1.0, 1.0, 2.0),
                                                        (50, 0.95, 0.0, 1.1)])
@pytest.mark.parametrize("ban_eos", [False, True])
def test_warp_equals_upstream_logits_to_probs(top_k, top_p, temperature, rp, ban_eos):
    g = torch.Generator().manual_seed(hash((top_k, top_p, temperature, ban_eos)) % 2**31)
    params = SamplingParams(top_k=top_k, top_p=top_p, temperature=temperature, repetition_penalty=rp)
    for _ in range(20):
        logits = torch.randn(V, generator=g) * 3
        logits[-1] = logits.max() + torch.rand(1, generator=g).item() - 0.5  # EOS near the top: the stop test matters
        prev = torch.randint(0, V - 1, (int(torch.randint(0, 60, (1,), generator=g)),), generator=g)
        prev = torch.cat([prev, logits[:-1].topk(3).indices])  # penalise likely tokens so the penalty shows
        seen = torch.zeros(V, dtype=torch.bool)
        seen[prev] = True
        probs, argmax_eos = warp(logits[None], seen[None], torch.tensor([ban_eos]), params)
        ref, ref_eos = _upstream_probs(logits, prev, ban_eos, top_k=top_k, top_p=top_p, temperature=temperature,
                                       repetition_penalty=rp)
        torch.testing.assert_close(probs[0], ref, atol=1e-6, rtol=0)
        assert bool(argmax_eos[0]) == ref_eos


def test_seen_block_is_cumulative():
    seen = torch.zeros(10, dtype=torch.bool)
    seen[2] = True
    rows = seen_block(seen, torch.tensor([5, 7, 5]))
    assert rows.tolist() == [[i in s for i in range(10)] for s in ({2}, {2, 5}, {2, 5, 7}, {2, 5, 7})]


def test_bad_sampling_options_are_refused():
    for kw in [dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5), dict(temperature=-1), dict(repetition_penalty=0),
               dict(max_new_tokens=0), dict(max_new_tokens=1501)]:
        with pytest.raises(SpecdecError):
            SamplingParams(**kw)


def _emitted_histograms(p, q, n, k, draft_q=None, seed=0):
    """Run accept() n times with drafts sampled from q; histogram the token emitted at each position."""
    g = torch.Generator().manual_seed(seed)
    hist = torch.zeros(k + 1, p.shape[-1])
    argmax_eos = torch.zeros(k + 1, dtype=torch.bool)
    ban = [False] * (k + 1)
    drafts_all = torch.stack([torch.multinomial(q[i], n, replacement=True, generator=g) for i in range(k)], 1)
    for drafts in drafts_all.tolist():
        v = accept(p, q if draft_q is None else draft_q, drafts, argmax_eos, ban, eos=-1, generator=g)
        for i, t in enumerate(v.tokens):
            hist[i, t] += 1
    return hist


def _tv(hist, p):
    return 0.5 * (hist / hist.sum() - p).abs().sum().item()


def _random_pair(vocab, seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(3, vocab, generator=g) * 1.5, -1)
    q = torch.softmax(torch.randn(3, vocab, generator=g) * 1.5, -1)
    p[:, 0] = 0  # supports differ, as under different top-k truncations
    q[:, 1] = 0
    return p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)


def test_accept_reproduces_the_target_distribution():
    n, vocab = 100_000, 12
    p, q = _random_pair(vocab, 0)
    hist = _emitted_histograms(p, q[:2], n, k=2)
    assert hist[0].sum() == n
    for i in range(3):  # position i's token, whenever the round reached it, is distributed as p_i
        assert _tv(hist[i], p[i]) < 3 / hist[i].sum().sqrt().item(), i


def test_accept_with_one_hot_drafts_reproduces_the_target_distribution():
    n, vocab = 40_000, 8
    p, q = _random_pair(vocab, 1)
    g = torch.Generator().manual_seed(5)
    counts = torch.zeros(vocab)
    for _ in range(n):
        d = int(torch.randint(0, vocab, (1,), generator=g))  # a deterministic drafter: q is one-hot at d
        onehot = torch.zeros(1, vocab)
        onehot[0, d] = 1
        v = accept(p[:2], onehot, [d], torch.zeros(2, dtype=torch.bool), [False, False], -1, g)
        counts[v.tokens[0]] += 1
    assert _tv(counts, p[0]) < 3 / n ** 0.5


def test_the_distribution_test_catches_a_wrong_q():
    """Power check: returning raw draft probabilities instead of those actually sampled from (the HF bug) is caught."""
    n, vocab = 100_000, 12
    p, q = _random_pair(vocab, 0)
    wrong = torch.softmax(torch.log(q[:2].clamp_min(1e-9)) / 1.5, -1)  # q at another temperature
    hist = _emitted_histograms(p, q[:2], n, k=2, draft_q=wrong)
    assert _tv(hist[0], p[0]) > 3 / n ** 0.5


def _tree(vocab, depth, seed, zeros=True):
    """Context-dependent next-token distributions of a target (p) and a draft (q) for every prefix of up to `depth`
    tokens, with `zeros` some entries zero (as top-k truncation makes them)."""
    g = torch.Generator().manual_seed(seed)
    p, q = {}, {}
    for n in range(depth + 1):
        for prefix in itertools.product(range(vocab), repeat=n):
            for table in (p, q):
                x = torch.softmax(torch.randn(vocab, generator=g) * 1.5, -1)
                if zeros and torch.rand(1, generator=g) < 0.3:
                    x[torch.randint(vocab, (1,), generator=g)] = 0
                table[prefix] = x / x.sum()
    return p, q


def _joint_counts(p, q, k, n, seed, verifier_p=None):
    """n rounds: k drafts sampled from q along their own prefix, verified against p's rows for that prefix (or
    `verifier_p`'s), the round's tokens continued by sampling the target to k + 1 tokens → counts per sequence."""
    g = torch.Generator().manual_seed(seed)
    rows = verifier_p or p
    counts = Counter()
    for _ in range(n):
        drafts = []
        for _ in range(k):
            drafts.append(int(torch.multinomial(q[tuple(drafts)], 1, generator=g)))
        prefixes = [tuple(drafts[:i]) for i in range(k + 1)]
        v = accept(torch.stack([rows[x] for x in prefixes]), torch.stack([q[x] for x in prefixes[:k]]), drafts,
                   torch.zeros(k + 1, dtype=torch.bool), [False] * (k + 1), eos=-1, generator=g)
        seq = list(v.tokens)
        while len(seq) < k + 1:
            seq.append(int(torch.multinomial(p[tuple(seq)], 1, generator=g)))
        counts[tuple(seq)] += 1
    return counts


def _joint_fit(p, counts, vocab, k):
    """χ² p-value of the counts against the target's own joint distribution of k + 1 tokens (0 if a sequence the
    target cannot produce occurs)."""
    cells = list(itertools.product(range(vocab), repeat=k + 1))
    expected = torch.tensor([float(torch.prod(torch.stack([p[s[:i]][s[i]] for i in range(k + 1)]))) for s in cells],
                            dtype=torch.float64)
    observed = torch.tensor([counts[s] for s in cells], dtype=torch.float64)
    if observed[expected == 0].sum() > 0:
        return 0.0
    live = expected > 0
    n = observed.sum()
    return chisquare(observed[live].numpy(), (expected[live] / expected[live].sum() * n).numpy()).pvalue


def test_block_verification_keeps_the_targets_joint_distribution():
    """Rounds of 3 drafts over 3 tokens with context-dependent p and q: the round's tokens, continued by the target,
    are distributed as the target's own 4-token sequences (81 cells, χ² at 1e-3)."""
    vocab, k = 3, 3
    p, q = _tree(vocab, k + 1, seed=1)
    assert _joint_fit(p, _joint_counts(p, q, k, 30_000, seed=2), vocab, k) > 1e-3


def test_the_joint_test_catches_a_verifier_that_ignores_the_drafted_context():
    """Power check: verifying every position against the distribution after no drafts is caught (on a tree without
    zeros, so by the χ² test, not by an impossible sequence)."""
    vocab, k = 3, 3
    p, q = _tree(vocab, k + 1, seed=1, zeros=False)
    blind = {x: p[()] for x in p}
    assert _joint_fit(p, _joint_counts(p, q, k, 30_000, seed=2, verifier_p=blind), vocab, k) < 1e-3
