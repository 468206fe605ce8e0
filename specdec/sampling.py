"""Upstream GPT-SoVITS sampling, exactly, per position; and the speculative verification step (block verification).

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


ARGMAX_STOP, EOS_DRAFT, BONUS = 0, 1, 2  # how a round's block ends (`block_end`)


def block_end(drafts: list[int], argmax_eos: torch.Tensor, eos: int) -> tuple[int, int]:
    """Where a round's block of drafts ends → (g, how): `g` drafts take part in verification; how = ARGMAX_STOP when
    position g's argmax is EOS (sequential decoding stops there whatever it samples), EOS_DRAFT when draft g is EOS
    (nothing follows it), else BONUS (g = k: position k's token is drawn from p_k)."""
    k = len(drafts)
    for i in range(k + 1):
        if bool(argmax_eos[i]):
            return i, ARGMAX_STOP
        if i < k and drafts[i] == eos:
            return i + 1, EOS_DRAFT
    return k, BONUS


def accept(p: torch.Tensor, q: torch.Tensor | None, drafts: list[int], argmax_eos: torch.Tensor, ban_eos: list[bool],
           eos: int, generator: torch.Generator | None) -> Verdict:
    """Speculative verification of one sequence's round by block verification (Sun et al. 2024, "Block
    Verification Accelerates Speculative Decoding"): exact like token-by-token verification (Leviathan et al. 2023)
    and never keeps fewer tokens — it judges the block jointly instead of stopping at the first draft whose own
    ratio fails.

    p [k+1, V] target probabilities per position (row i: history including drafts before i), q [k, V] the
    distributions the drafts were sampled from (one-hot rows for deterministic drafters; q_i(d_i) > 0), drafts: k
    token ids.
    With w_0 = 1, w_i = min(1, w_{i-1} p_{i-1}(d_{i-1}) / q_{i-1}(d_{i-1})) and, for i < g,
    h_i = Σ_x max(0, w_i p_i(x) − q_i(x)) / (Σ_x max(0, w_i p_i(x) − q_i(x)) + 1 − w_i), h_g = w_g, the round keeps
    τ = the last i with u_i < h_i (0 if none) drafts and draws position τ's token from norm(max(0, w_τ p_τ − q_τ)),
    or from p_g when τ = g. The stop rule (argmax == EOS or token == EOS, token dropped) ends the block where
    sequential decoding would stop (`block_end`). With k = 0 this is plain sampling. w and h are computed in fp64 so
    that every backend (this, kernels/cpu.c, the Triton kernel) decides alike.
    """
    k, V = len(drafts), p.shape[-1]
    if k and not bool(torch.isfinite(q).all()):
        raise RuntimeError("the draft returned non-finite probabilities (a broken draft model?)")
    u, noise = round_noise(k, ban_eos[0], V, generator)
    g, how = block_end(drafts, argmax_eos, eos)
    w, h = block_weights(p, q, drafts[:g])
    tau = max((i for i in range(1, g + 1) if float(u[i - 1]) < h[i - 1]), default=0)
    if tau == g and how != BONUS:
        stop = g - 1 if how == EOS_DRAFT else g
        return Verdict(drafts[:stop], stop, True)
    weights = p[tau] if tau == g else torch.clamp(w[tau] * p[tau].double() - q[tau].double(), min=0).float()
    token = race(weights, noise[:V - 1 if ban_eos[tau] else V])
    if token == eos:
        return Verdict(drafts[:tau], tau, True)
    return Verdict(drafts[:tau] + [token], tau, False)


def block_weights(p: torch.Tensor, q: torch.Tensor | None, drafts: list[int]) -> tuple[list[float], list[float]]:
    """Block verification's w_0 … w_g and h_1 … h_g (`accept`) for a block of g drafts, in fp64."""
    g = len(drafts)
    w, h = [1.0], []
    if not g:
        return w, h
    pd, qd = p[torch.arange(g), drafts].tolist(), q[torch.arange(g), drafts].tolist()
    for i in range(1, g + 1):
        w.append(min(w[-1] * pd[i - 1] / qd[i - 1], 1.0))
        if i < g:
            num = float(torch.clamp(w[i] * p[i].double() - q[i].double(), min=0).sum())
            den = num + (1.0 - w[i])
            h.append(min(num / den, 1.0) if den > 0 else 1.0)
        else:
            h.append(w[i])
    return w, h
