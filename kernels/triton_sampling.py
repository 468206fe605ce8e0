"""Triton sampling: the upstream warper chain per position and the speculative accept/resample step.

Both kernels take a ragged batch of verify rows (sequence b owns rows query_start_loc[b] .. [b+1]: the pending
token, then its k drafts) and fixed-shape inputs only, so a round needs no host sync until its verdict is read.

`warp` matches `specdec.sampling.warp` row by row: the same penalty, ban, top-p cut, temperature and top-k pivot
(divisions rounded as IEEE; the top-p mass summed in fp64 and rounded to fp32, as torch's CPU cumsum accumulates),
so the kept sets agree and probabilities differ only by softmax rounding (a few ulps). Instead of sorting the
vocabulary, both cuts are thresholds found by bisection over order-preserving integer keys of the logits (exact,
~32 masked reductions). Two places can disagree by construction: a top-p cut whose mass lies within rounding of
top_p, and ties at the top-p cut (torch's unstable sort keeps some of the tied tokens, this kernel all of them).

`accept` consumes the very random numbers the torch path draws (`specdec.sampling.round_noise`: uniforms for the
drafts, one exponential vector for the race), so the same seeds give the same tokens given the same probabilities.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from specdec.sampling import SamplingParams


@triton.jit
def _seq_of_row(query_start_loc_ptr, num_seqs, row):
    """Largest b with query_start_loc[b] <= row."""
    b = 0
    hi = num_seqs - 1
    while b < hi:
        mid = (b + hi + 1) // 2
        if tl.load(query_start_loc_ptr + mid) <= row:
            b = mid
        else:
            hi = mid - 1
    return b


@triton.jit
def _ordered(x):
    """fp32 → int32 keys in the same order (-inf lowest), so a threshold can be found by integer bisection."""
    i = x.to(tl.int32, bitcast=True)
    return tl.where(i >= 0, i, i ^ 0x7FFFFFFF)


@triton.jit
def _warp_kernel(logits_ptr, seen_ptr, tokens_ptr, query_start_loc_ptr, ban_ptr, top_k_ptr, top_p_ptr,
                 temperature_ptr, penalty_ptr, probs_ptr, argmax_eos_ptr, num_seqs, vocab,
                 s_logits, s_seen, s_probs, BLOCK_V: tl.constexpr):
    r = tl.program_id(0)
    b = _seq_of_row(query_start_loc_ptr, num_seqs, r)
    q0 = tl.load(query_start_loc_ptr + b)
    v = tl.arange(0, BLOCK_V)
    v_ok = v < vocab
    x = tl.load(logits_ptr + r.to(tl.int64) * s_logits + v, mask=v_ok, other=float("-inf")).to(tl.float32)
    # repetition penalty over the history plus the drafts before this row (the cumulative seen-mask)
    seen = tl.load(seen_ptr + b.to(tl.int64) * s_seen + v, mask=v_ok, other=0) != 0
    for j in range(q0 + 1, r + 1):
        seen = seen | (v == tl.load(tokens_ptr + j))
    rp = tl.load(penalty_ptr + r)
    x = tl.where(seen & v_ok, tl.where(x < 0, x * rp, tl.math.div_rn(x, rp)), x)
    eos = vocab - 1
    x = tl.where((v == eos) & (tl.load(ban_ptr + r) != 0), float("-inf"), x)
    # torch.argmax picks the first maximum: EOS (the last id) wins only when strictly above every other logit
    eos_logit = tl.max(tl.where(v == eos, x, float("-inf")), 0)
    tl.store(argmax_eos_ptr + r, (eos_logit > tl.max(tl.where(v < eos, x, float("-inf")), 0)).to(tl.int8))
    top_p = tl.load(top_p_ptr + r)
    if top_p < 1.0:  # keep the top logits while the probability mass from the top stays <= top_p, and the first
        p = tl.exp(x - tl.max(x, 0))
        p = (p / tl.sum(p, 0)).to(tl.float64)
        key = _ordered(x)
        lo = tl.min(key, 0).to(tl.int64)
        hi = tl.max(key, 0).to(tl.int64) + 1
        while lo < hi:  # the smallest key whose mass from the top (fp64, rounded to fp32 as torch's cumsum) fits
            mid = (lo + hi) // 2
            if tl.sum(tl.where(key >= mid, p, 0.0), 0).to(tl.float32) <= top_p:
                hi = mid
            else:
                lo = mid + 1
        cut = tl.minimum(tl.min(tl.where(key >= lo, x, float("inf")), 0), tl.max(x, 0))
        x = tl.where(x >= cut, x, float("-inf"))
    x = tl.math.div_rn(x, tl.load(temperature_ptr + r))
    # top-k: the k-th largest value, found by bisection on the order-preserving integer keys (no sort)
    k = tl.minimum(tl.load(top_k_ptr + r), vocab)
    key = _ordered(x)
    lo = tl.min(key, 0).to(tl.int64)
    hi = tl.max(key, 0).to(tl.int64)
    while lo < hi:  # the largest key with at least k logits at or above it
        mid = (lo + hi + 1) // 2
        if tl.sum((v_ok & (key >= mid)).to(tl.int32), 0) >= k:
            lo = mid
        else:
            hi = mid - 1
    pivot = tl.min(tl.where(v_ok & (key >= lo), x, float("inf")), 0)
    x = tl.where(x < pivot, float("-inf"), x)
    e = tl.exp(x - tl.max(x, 0))
    tl.store(probs_ptr + r.to(tl.int64) * s_probs + v, e / tl.sum(e, 0), mask=v_ok)


@triton.jit
def _accept_kernel(probs_ptr, draft_probs_ptr, tokens_ptr, argmax_eos_ptr, ban_ptr, uniform_ptr, noise_ptr,
                   query_start_loc_ptr, out_ptr, vocab, s_probs, s_draft, s_noise, BLOCK_V: tl.constexpr):
    """One program per sequence: block verification as `specdec.sampling.accept` (w and h in fp64; the block ends
    at the first row whose argmax is EOS or after a drafted EOS), then the race of the residual (or, the whole block
    kept, the bonus distribution) against the exponential noise.
    out[b] = (drafts accepted, token at the first unaccepted position or -1, position of the stop or -1)."""
    b = tl.program_id(0)
    q0 = tl.load(query_start_loc_ptr + b)
    k = tl.load(query_start_loc_ptr + b + 1) - q0 - 1
    eos = vocab - 1
    g = k  # drafts in the block; how it ends: 0 argmax EOS, 1 drafted EOS, 2 bonus (specdec.sampling.block_end)
    how = tl.full([], 2, tl.int32)
    for i in range(0, k + 1):
        if how == 2:
            if tl.load(argmax_eos_ptr + q0 + i) != 0:
                g, how = i, tl.full([], 0, tl.int32)
            elif i < k:
                if tl.load(tokens_ptr + q0 + i + 1) == eos:
                    g, how = i + 1, tl.full([], 1, tl.int32)
    v = tl.arange(0, BLOCK_V)
    w = tl.full([], 1.0, tl.float64)
    w_tau = w
    tau = tl.full([], 0, tl.int32)
    for i in range(1, k + 1):
        if i <= g:
            row = (q0 + i - 1).to(tl.int64)
            d = tl.load(tokens_ptr + row + 1)
            ratio = w * tl.load(probs_ptr + row * s_probs + d).to(tl.float64)
            w = tl.minimum(ratio / tl.load(draft_probs_ptr + row * s_draft + d).to(tl.float64), 1.0)
            h = w
            if i < g:
                nxt = row + 1
                p_i = tl.load(probs_ptr + nxt * s_probs + v, mask=v < vocab, other=0.0).to(tl.float64)
                q_i = tl.load(draft_probs_ptr + nxt * s_draft + v, mask=v < vocab, other=0.0).to(tl.float64)
                num = tl.sum(tl.maximum(w * p_i - q_i, 0.0), 0)
                den = num + (1.0 - w)
                h = tl.where(den > 0.0, tl.minimum(num / tl.where(den > 0.0, den, 1.0), 1.0), 1.0)
            if tl.load(uniform_ptr + row).to(tl.float64) < h:
                tau, w_tau = i, w
    stop = tl.full([], -1, tl.int32)
    token = tl.full([], -1, tl.int32)
    if (tau == g) & (how != 2):
        stop = g - how  # a drafted EOS is dropped with the stop
    else:
        row = (q0 + tau).to(tl.int64)
        live = v < vocab - (tl.load(ban_ptr + row) != 0).to(tl.int32)  # a banned step races over the 1024 tokens only
        wts = tl.load(probs_ptr + row * s_probs + v, mask=live, other=0.0)
        if tau < g:
            q_t = tl.load(draft_probs_ptr + row * s_draft + v, mask=live, other=0.0).to(tl.float64)
            wts = tl.maximum(w_tau * wts.to(tl.float64) - q_t, 0.0).to(tl.float32)
        noise = tl.load(noise_ptr + b.to(tl.int64) * s_noise + v, mask=live, other=1.0)
        token = tl.argmax(tl.where(live, tl.math.div_rn(wts, noise), -1.0), 0, tie_break_left=True).to(tl.int32)
        if token == eos:
            stop, token = tau, tl.full([], -1, tl.int32)
    tl.store(out_ptr + 3 * b, tl.where(stop >= 0, stop, tau))
    tl.store(out_ptr + 3 * b + 1, token)
    tl.store(out_ptr + 3 * b + 2, stop)


def row_params(params: list[SamplingParams], vocab: int, device) -> tuple[torch.Tensor, ...]:
    """Per-row (top_k, top_p, temperature, repetition_penalty) tensors: top_k None → vocab, temperature clamped
    to 1e-5 as the torch path divides by it."""
    return (torch.tensor([vocab if p.top_k is None else p.top_k for p in params], dtype=torch.int32, device=device),
            torch.tensor([p.top_p for p in params], dtype=torch.float32, device=device),
            torch.tensor([max(p.temperature, 1e-5) for p in params], dtype=torch.float32, device=device),
            torch.tensor([p.repetition_penalty for p in params], dtype=torch.float32, device=device))


def warp(logits: torch.Tensor, seen: torch.Tensor, tokens: torch.Tensor, query_start_loc: torch.Tensor,
         ban_eos: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, temperature: torch.Tensor,
         repetition_penalty: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [N, V], seen [B, V] bool (each sequence's history), tokens [N] (per sequence the pending token's row,
    not read, then its drafts), query_start_loc [B+1] int32, ban_eos [N] bool, per-row params [N] (see `row_params`)
    → probs [N, V] fp32, argmax_eos [N] bool; row i of a sequence penalises its history plus drafts 1..i."""
    N, V = logits.shape
    probs = torch.empty(N, V, dtype=torch.float32, device=logits.device)
    argmax_eos = torch.empty(N, dtype=torch.int8, device=logits.device)
    _warp_kernel[(N,)](logits, seen.view(torch.uint8), tokens, query_start_loc, ban_eos.view(torch.uint8), top_k,
                       top_p, temperature, repetition_penalty, probs, argmax_eos, seen.shape[0], V,
                       logits.stride(0), seen.stride(0), probs.stride(0), BLOCK_V=triton.next_power_of_2(V))
    return probs, argmax_eos.bool()


def accept(probs: torch.Tensor, draft_probs: torch.Tensor, tokens: torch.Tensor, argmax_eos: torch.Tensor,
           ban_eos: torch.Tensor, uniform: torch.Tensor, noise: torch.Tensor,
           query_start_loc: torch.Tensor) -> torch.Tensor:
    """probs [N, V] warped target rows, draft_probs [N, V] (row i of a sequence: the distribution draft i+1 came
    from; its last row is unused), tokens [N], argmax_eos [N] bool, ban_eos [N] bool, uniform [N] (row i: the
    uniform of draft i+1), noise [B, V] (one race per sequence; a banned race reads the first V-1)
    → [B, 3] int32: drafts accepted, the token drawn at the first unaccepted position, stop position or -1."""
    N, V = probs.shape
    B = query_start_loc.shape[0] - 1
    out = torch.empty(B, 3, dtype=torch.int32, device=probs.device)
    _accept_kernel[(B,)](probs, draft_probs, tokens, argmax_eos.view(torch.int8), ban_eos.view(torch.uint8),
                         uniform, noise, query_start_loc, out, V, probs.stride(0), draft_probs.stride(0),
                         noise.stride(0), BLOCK_V=triton.next_power_of_2(V))
    return out
