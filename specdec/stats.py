"""Speculative-decoding counters with vLLM's names; the CLI, the bench and `--json` all print from here."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class SpecStats:
    num_drafts: int = 0  # rounds that proposed at least one draft token
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    num_accepted_tokens_per_pos: list[int] = field(default_factory=list)  # [i]: rounds whose draft i was accepted
    num_emitted_tokens: int = 0  # tokens generated (EOS excluded)
    target_passes: int = 0  # target forward passes, prefill included
    prefill_s: float = 0.0
    ttft_s: float = 0.0  # call → first token (vLLM's time to first token): pool, prefill and its sampling
    draft_s: float = 0.0
    verify_s: float = 0.0
    wall_s: float = 0.0
    lossy: bool = False  # the target ran quantised (eco mode): tokens follow an approximation of the model

    def record_round(self, num_drafted: int, num_accepted: int, num_emitted: int) -> None:
        self.num_emitted_tokens += num_emitted
        if not num_drafted:
            return
        self.num_drafts += 1
        self.num_draft_tokens += num_drafted
        self.num_accepted_tokens += num_accepted
        per_pos = self.num_accepted_tokens_per_pos
        per_pos.extend([0] * (num_drafted - len(per_pos)))
        for i in range(num_accepted):
            per_pos[i] += 1

    # ---- derived figures ---------------------------------------------------------------------------------
    @property
    def mean_acceptance_length(self) -> float:
        """Tokens per drafting round, the bonus/recovered token included (vLLM: 1 + accepted / drafts)."""
        return 1.0 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 1.0

    @property
    def draft_acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def acceptance_per_position(self) -> list[float]:
        return [n / self.num_drafts for n in self.num_accepted_tokens_per_pos] if self.num_drafts else []

    @property
    def tokens_per_s(self) -> float:
        return self.num_emitted_tokens / self.wall_s if self.wall_s > 0 else 0.0

    def merge(self, other: "SpecStats") -> "SpecStats":
        out = SpecStats()
        for name, value in asdict(self).items():
            theirs = getattr(other, name)
            if isinstance(value, bool):
                setattr(out, name, value or theirs)
            elif isinstance(value, list):
                n = max(len(value), len(theirs))
                value = [a + b for a, b in zip(value + [0] * (n - len(value)), theirs + [0] * (n - len(theirs)))]
                setattr(out, name, value)
            else:
                setattr(out, name, value + theirs)
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(mean_acceptance_length=self.mean_acceptance_length, draft_acceptance_rate=self.draft_acceptance_rate,
                 acceptance_per_position=self.acceptance_per_position, tokens_per_s=self.tokens_per_s)
        return d
