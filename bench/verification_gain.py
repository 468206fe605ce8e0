"""Tokens per round by block verification (the engine's rule, specdec.sampling.accept) against token-by-token
verification, on the very blocks a draft proposes in real rounds: for each round, both rules' expected tokens given
its drafts and the target's rows (no sampling noise in the comparison; the generation itself runs on as the engine
runs it). Rounds that end in a stop are left out (both rules then keep the same prefix up to it).

    python bench/verification_gain.py --gpt T.safetensors --draft int8:D.safetensors [--k 4,6,8] [--repeats 2]

Demo voice's sentences (specdec bench's), upstream's default sampling. Writes bench/results/verification_gain.json
(or -o).
"""
import argparse
import os
import statistics

import torch
from rich.console import Console

from specdec import bench, demo
from specdec.cli import _load_target
from specdec.distill import tokens_per_round
from specdec.engine import Engine, Request
from specdec.sampling import BONUS, SamplingParams, block_end, block_weights


def round_expectations(p: torch.Tensor, q: torch.Tensor, drafts: list[int]) -> tuple[float, float]:
    """Expected tokens of one round (the k + 1-th included): token-by-token 1 + Σ_i Π_{j≤i} min(1, p_j/q_j), block
    verification Σ_t (t + 1) P(τ = t) with P(τ = t) = h_t Π_{j>t} (1 − h_j)."""
    token = tokens_per_round(tuple(min(1.0, float(p[i, d] / q[i, d])) for i, d in enumerate(drafts)))
    _, h = block_weights(p, q, drafts)
    block, tail = 0.0, 1.0
    for t in range(len(drafts), -1, -1):
        block += (t + 1) * (h[t - 1] if t else 1.0) * tail
        tail *= 1 - h[t - 1] if t else 1.0
    return token, block


class Recording(Engine):
    """The engine, noting both rules' expected tokens for every round before it verifies the round as usual."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.rounds, self.stopped = [], 0

    def _accept(self, seqs, logits, proposals):
        probs, argmax_eos = self._warped(seqs, logits.float(), proposals, self._bans(seqs, proposals))
        r0 = 0
        for p in proposals:
            rows = slice(r0, r0 + len(p.drafts) + 1)
            r0 = rows.stop
            if not p.drafts:
                continue
            if block_end(p.drafts, argmax_eos[rows], self.target.cfg.eos)[1] != BONUS:
                self.stopped += 1
                continue
            self.rounds.append(round_expectations(probs[rows], p.q.float(), p.drafts))
        return super()._accept(seqs, logits, proposals)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpt", required=True)
    ap.add_argument("--draft", required=True)
    ap.add_argument("--k", default="4,6,8")
    ap.add_argument("--repeats", type=int, default=2, help="seed sets over the sentences")
    ap.add_argument("-o", default=os.path.join(os.path.dirname(__file__), "results", "verification_gain.json"))
    args = ap.parse_args()
    console = Console()
    bundle = demo.load()
    voice = bundle.voice(None)
    target = _load_target(args.gpt)
    requests = []
    for rep in range(args.repeats):
        for i, text in enumerate(bench.BENCH_TEXTS):
            phones, _ = bundle.frontend.phones(text, voice.language)
            requests.append(Request(torch.cat([voice.phones, phones]), voice.tokens,
                                    params=SamplingParams(seed=1000 * rep + i)))
    res = {"gpt": args.gpt, "draft": args.draft, "sentences": len(bench.BENCH_TEXTS), "repeats": args.repeats,
           "machine": bench.machine(), "by_k": {}}
    with console.status("rounds") as status:
        for k in (int(x) for x in args.k.split(",")):
            engine = Recording(target, draft=args.draft, k=k)
            for j, r in enumerate(requests):
                status.update(f"k = {k}: request {j + 1}/{len(requests)}")
                engine.generate([r])
            token, block = (statistics.fmean(x) for x in zip(*engine.rounds))
            res["by_k"][k] = {"rounds": len(engine.rounds), "rounds_ending_in_a_stop": engine.stopped,
                              "tokens_per_round_token_by_token": token, "tokens_per_round_block": block,
                              "gain": block / token - 1}
            console.print(f"k = {k}: {len(engine.rounds)} rounds, tokens per round token-by-token {token:.3f}, "
                          f"block {block:.3f} (+{100 * (block / token - 1):.1f} %)")
    bench.write_json(args.o, res)


if __name__ == "__main__":
    main()
