"""Upstream GPT-SoVITS sampling, exactly, per position; and the speculative accept / resample step.

Upstream order (`AR/models/utils.py` logits_to_probs, `t2s_model.py` infer_panel_naive):
  1. repetition penalty over the set of tokens seen so far (prompt + generated), once per distinct id:
     s < 0 → s·rp, else s / rp;
  2. EOS impossible for the first 11 steps (upstream slices it off the vocabulary);
  3. top-p on the penalised logits (no right shift: the token that crosses top_p is removed, rank 0 kept);
  4. temperature: / max(T, 1e-5);
  5. top-k: keep logits >= the k-th largest (ties kept);
  6. softmax, then the exponential race argmax(p / E), E ~ Exp(1).
Generation stops when argmax(penalised logits) == EOS or the sample == EOS; that last token is dropped.

Every row of a [N, V] block is one position: the speculative verifier warps k+1 positions of one sequence at once,
each with its own seen-mask (history including the earlier drafts) and its own EOS ban (absolute step index).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from specdec.errors import SpecdecError

MIN_STEPS_BEFORE_EOS = 11  # upstream: `if idx < 11: logits = logits[:, :-1]`
MAX_STEPS = 1500  # upstream's hard cap on decode steps per segment (60 s of audio at 25 Hz)


SAMPLING_OPTIONS = ("top_k", "top_p", "temperature", "repetition_penalty")  # the warper's settings, upstream names


@dataclass(frozen=True)
class SamplingParams:
    """Upstream names and defaults (TTS.run / api_v2)."""

    top_k: int | None = 15
    top_p: float = 1.0
    temperature: float = 1.0
    repetition_penalty: float = 1.35
    max_new_tokens: int = MAX_STEPS
    seed: int | None = None

    def __post_init__(self):
        if self.top_k is not None and self.top_k < 1:
            raise SpecdecError(f"top_k must be >= 1 (got {self.top_k})")
        if not 0.0 < self.top_p <= 1.0:
            raise SpecdecError(f"top_p must be in (0, 1] (got {self.top_p})")
        if not self.temperature >= 0.0:
            raise SpecdecError(f"temperature must be >= 0 (got {self.temperature})")
        if not self.repetition_penalty > 0.0:
            raise SpecdecError(f"repetition_penalty must be > 0 (got {self.repetition_penalty})")
        if not 1 <= self.max_new_tokens <= MAX_STEPS:
            raise SpecdecError(f"max_new_tokens must be in [1, {MAX_STEPS}] (got {self.max_new_tokens})")


def warp(logits: torch.Tensor, seen: torch.Tensor, ban_eos: torch.Tensor,
         params: SamplingParams | list[SamplingParams]) -> tuple[torch.Tensor, torch.Tensor]:
    """The upstream warper chain on a block of positions (rows may belong to different requests).

    logits [N, V] (not modified), seen [N, V] bool, ban_eos [N] bool, params: one for all rows or one per row →
    probs [N, V] (EOS has probability 0 where banned), argmax_eos [N] bool (the stop rule's argmax test).
    """
    if isinstance(params, SamplingParams):
        return _warp(logits, seen, ban_eos, params)
    groups: dict[SamplingParams, list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault(p, []).append(i)
    if len(groups) == 1:
        return _warp(logits, seen, ban_eos, params[0])
    probs = torch.empty_like(logits, dtype=torch.float32)
    argmax_eos = torch.empty(logits.shape[0], dtype=torch.bool)
    for p, rows in groups.items():
        idx = torch.tensor(rows)
        probs[idx], argmax_eos[idx] = _warp(logits[idx], seen[idx], ban_eos[idx], p)
    return probs, argmax_eos


def _warp(logits, seen, ban_eos, params: SamplingParams):
    rp = params.repetition_penalty
    x = logits.float()
    x = x if rp == 1.0 else torch.where(seen, torch.where(x < 0, x * rp, x / rp), x)
    if bool(ban_eos.any()):
        x = x.clone() if x is logits else x
        x[ban_eos, -1] = float("-inf")
    argmax_eos = x.argmax(dim=-1) == x.shape[-1] - 1
    if params.top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(x, descending=True)
        remove = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1) > params.top_p
        remove[:, 0] = False
        x = x.masked_fill(remove.scatter(1, sorted_idx, remove), float("-inf"))
    if params.temperature != 1.0:  # x / 1.0 is x, bit for bit: the default skips an op
        x = x / max(params.temperature, 1e-5)
    if params.top_k is not None:
        pivot = torch.topk(x, min(params.top_k, x.shape[-1]), dim=-1).values[:, -1:]
        x = torch.where(x < pivot, float("-inf"), x)
    return torch.softmax(x, dim=-1), argmax_eos


def exponential_noise(ban_eos: bool, vocab_size: int, generator: torch.Generator | None) -> torch.Tensor:
    """E ~ Exp(1) over the live vocabulary: 1024 wide while EOS is banned, as upstream draws it, so the same seed
    gives the same stream as upstream's non-speculative sampler."""
    return torch.empty(vocab_size - 1 if ban_eos else vocab_size).exponential_(1, generator=generator)


def round_noise(k: int, ban_first: bool, vocab_size: int, generator: torch.Generator | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The random numbers of one accept step, drawn before any outcome is known so that a fixed-shape kernel
    (specdec.kernels.triton_sampling) consumes the same stream: k uniforms, then one exponential vector for the
    race. It is upstream's 1024-wide draw for a plain step (k = 0) while EOS is banned, else full width; a race at
    a banned position reads its first 1024 entries."""
    u = torch.rand(k, generator=generator) if k else torch.empty(0)
    return u, exponential_noise(k == 0 and ban_first, vocab_size, generator)


def race(weights: torch.Tensor, noise: torch.Tensor) -> int:
    """argmax(w / E): a categorical draw proportional to w (w need not be normalised)."""
    return int(torch.argmax(weights[: noise.shape[0]] / noise))


def seen_block(seen: torch.Tensor, drafts: torch.Tensor) -> torch.Tensor:
    """seen [V] bool + drafts [k] → [k+1, V]: row i is the history of position i (drafts before it included)."""
    k, V = drafts.shape[0], seen.shape[0]
    rows = seen.expand(k + 1, V).clone()
    if k:
        hit = torch.zeros(k + 1, V, dtype=torch.int32)
        hit[torch.arange(1, k + 1), drafts] = 1
        rows |= hit.cumsum(0) > 0
    return rows


@dataclass
class Verdict:
    tokens: list[int]  # emitted this round, stop token excluded
    num_accepted: int  # drafts accepted
    stopped: bool

    @staticmethod
    def decode(drafts: list[int], n: int, token: int, stop: int) -> "Verdict":
        """From the kernels' per-sequence triple (the C and Triton accept steps): drafts accepted, the token drawn at
        the first unaccepted position, and the position generation stopped at (-1: it did not)."""
        return Verdict(drafts[:stop], stop, True) if stop >= 0 else Verdict(drafts[:n] + [token], n, False)


def accept(p: torch.Tensor, q: torch.Tensor | None, drafts: list[int], argmax_eos: torch.Tensor, ban_eos: list[bool],
           eos: int, generator: torch.Generator | None) -> Verdict:
    """Speculative accept / resample for one sequence (Leviathan et al. 2023, Chen et al. 2023).

    p [k+1, V] target probabilities per position, q [k, V] the distributions the drafts were sampled from
    (one-hot rows for deterministic drafters), drafts: k token ids. Draft i is accepted with probability
    min(1, p_i/q_i); the first rejection is replaced by a sample of norm(max(0, p_i - q_i)); if all pass, a bonus
    token is sampled from p_{k+1}. The stop rule (argmax == EOS or token == EOS, token dropped) is applied per
    position in order, exactly where sequential decoding would have applied it. With k = 0 this is plain sampling.
    """
    k, V = len(drafts), p.shape[-1]
    out: list[int] = []
    if k and not bool(torch.isfinite(q).all()):
        raise RuntimeError("the draft returned non-finite probabilities (a broken draft model?)")
    u, noise = round_noise(k, ban_eos[0], V, generator)
    if k:
        pd = p[torch.arange(k), drafts]
        qd = q[torch.arange(k), drafts]
        ok = (u * qd < pd).tolist()
    for i in range(k + 1):
        if i < k and ok[i]:
            token = drafts[i]
        else:
            weights = torch.clamp(p[i] - q[i], min=0) if i < k else p[i]
            token = race(weights, noise[:V - 1 if ban_eos[i] else V])
        if bool(argmax_eos[i]) or token == eos:
            return Verdict(out, min(i, k), True)
        out.append(token)
        if i < k and not ok[i]:
            return Verdict(out, i, False)
    return Verdict(out, k, False)
