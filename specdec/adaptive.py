"""Adaptive draft length: choose each round's k from the acceptance observed so far and the measured costs.

With per-token acceptance α, a round of k drafts emits E(k) = (1 − α^{k+1}) / (1 − α) tokens and costs
k·t_draft + t_verify(k). The policy picks the k ≤ k_max with the most tokens per second, k = 0 (a plain decoding
step) included; a sequence that stopped drafting still drafts one token every PROBE_EVERY rounds, so its α stays
current. α is estimated per sequence from its own rounds (accepted drafts vs. rejections, with exponential
forgetting: speech alternates easy stretches — silences, steady vowels — with hard ones), starting from the
engine's running estimate; costs are measured per engine, t_verify per k. (Block verification keeps longer prefixes
than this token-by-token model; α, estimated from the prefixes it keeps, absorbs that.)
Exactness does not depend on k: any k gives the target's distribution.
"""
from __future__ import annotations

from dataclasses import dataclass, field

DECAY = 0.9  # weight of the past per round
PROBE_EVERY = 8  # rounds without drafting between two one-token probes


def expected_tokens(alpha: float, k: int) -> float:
    return float(k + 1) if alpha >= 1.0 else (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


@dataclass
class Acceptance:
    """Per-sequence estimate of α: accepted drafts / (accepted drafts + rejections), exponentially forgotten.
    The prior is one pseudo-round at α = 0.5."""

    accepted: float = 1.0
    rejected: float = 1.0

    @property
    def alpha(self) -> float:
        return self.accepted / (self.accepted + self.rejected)

    def update(self, drafted: int, accepted: int) -> None:
        if drafted:
            self.accepted = DECAY * self.accepted + accepted
            self.rejected = DECAY * self.rejected + (accepted < drafted)

    def prior(self) -> "Acceptance":
        """A new sequence's starting estimate: this one's α, weighted as two pseudo-observations."""
        return Acceptance(2 * self.alpha, 2 * (1 - self.alpha))


@dataclass
class Costs:
    """Measured seconds per draft token and per verify pass (with its accept step) by k (EWMA); unseen k are
    interpolated."""

    draft_token_s: float | None = None
    verify_s: dict[int, float] = field(default_factory=dict)
    warm: bool = False

    def observe(self, k: int, draft_s: float, verify_s: float) -> None:
        if not self.warm:  # an engine's first round pays one-time costs (weights packed, kernels built): skip it
            self.warm = True
            return
        if k:
            per = draft_s / k
            self.draft_token_s = per if self.draft_token_s is None else 0.8 * self.draft_token_s + 0.2 * per
        old = self.verify_s.get(k)
        self.verify_s[k] = verify_s if old is None else 0.8 * old + 0.2 * verify_s

    def verify(self, k: int) -> float:
        if k in self.verify_s:
            return self.verify_s[k]
        seen = sorted(self.verify_s)
        lo = max((j for j in seen if j < k), default=None)
        hi = min((j for j in seen if j > k), default=None)
        if lo is not None and hi is not None:
            w = (k - lo) / (hi - lo)
            return (1 - w) * self.verify_s[lo] + w * self.verify_s[hi]
        near = lo if lo is not None else hi
        return self.verify_s[near] * (1 + 0.1 * (k - near)) if near is not None else 1.0


def choose_k(alpha: float, costs: Costs, k_max: int) -> int:
    """The k in 0..k_max with the most expected tokens per second (k_max until costs are known); 0 = no drafting,
    when a draft step costs more than its acceptance saves (a target not much bigger than its draft)."""
    if costs.draft_token_s is None:
        return k_max
    return max(range(k_max + 1),
               key=lambda k: expected_tokens(alpha, k) / (k * costs.draft_token_s + costs.verify(k)))
