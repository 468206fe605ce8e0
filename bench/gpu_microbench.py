"""Triton kernel microbenchmark at the GPT-SoVITS v2 shape (16 heads × 32 dims, one layer; 1025 tokens), CUDA only.

Per case: time per call (store + attention, CUDA events, median of --reps after warm-up; also replayed from a CUDA
graph, which the static grid allows), the bytes the call must move at least (every visible key and value once, the
queries, the new K/V written, the output), the achieved bandwidth, and that bandwidth as a fraction of a measured
device-to-device copy. The torch reference path is timed alongside. Then the sampling step (warp + accept for
B sequences × (k+1) rows at the upstream defaults) against the torch warp and the per-sequence torch accept.
Where there is no CUDA device it says so and exits 0.

    python bench/gpu_microbench.py [--dtype fp16] [--reps 50] [--page-size 64] [--json bench/results/x.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys

import torch

from specdec.cache import BlockTable, PagePool
from specdec.kernels import AttentionMetadata, paged_attention_torch, store_kv_torch
from specdec.models.gpt import GPTConfig
from specdec.sampling import SamplingParams, accept, seen_block, warp

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# (mode, batch, q_len per sequence, context before the new tokens, text prefix length)
CASES = [("decode", 1, 1, c, 100) for c in (256, 1024, 2048)] + \
        [("decode", b, 1, 1024, 100) for b in (8, 32)] + \
        [("verify", 1, q, c, 100) for q in (5, 9, 16) for c in (256, 2048)] + \
        [("verify", 8, 5, 1024, 100)] + \
        [("prefill", 1, n, 0, n // 2) for n in (128, 512)] + [("prefill", 4, 256, 0, 128)]


def cuda_time(fn, reps: int) -> float:
    """Median seconds per call of fn on the current stream."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def copy_bandwidth(reps: int) -> float:
    """Bytes per second of a 256 MiB device-to-device copy (read + write counted)."""
    src = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() / cuda_time(lambda: dst.copy_(src), reps)


def setup(mode, batch, q_len, ctx, prefix, cfg: GPTConfig, dtype, page_size):
    """One layer's pages holding each sequence's context, the new tokens' q/k/v and the metadata."""
    H, D = cfg.n_head, cfg.head_dim
    seq_len = ctx + q_len
    pool = PagePool(batch * -(-seq_len // page_size), page_size)
    (k_cache, v_cache), = pool.new_kv(1, H, D, dtype, "cuda")
    tables = []
    for _ in range(batch):
        t = BlockTable(pool)
        t.append(seq_len)
        tables.append(t)
    meta = AttentionMetadata([q_len] * batch, [seq_len] * batch, [prefix] * batch, [t.blocks for t in tables],
                             page_size, "cuda", "triton")
    all_slots = AttentionMetadata([seq_len] * batch, [seq_len] * batch, [0] * batch, [t.blocks for t in tables],
                                  page_size, "cuda").slot_mapping
    kv = torch.randn(2, batch * seq_len, H, D, device="cuda").to(dtype)
    store_kv_torch(kv[0], kv[1], k_cache, v_cache, all_slots)
    q, k, v = torch.randn(3, batch * q_len, H, D, device="cuda").to(dtype).unbind(0)
    return meta, q, k, v, k_cache, v_cache


def min_bytes(batch, q_len, ctx, cfg: GPTConfig, dtype) -> int:
    """Every cached key and value some query sees, read once (all of them: the last query sees the whole
    sequence); q and the new k, v read; the new K/V written into the pages; the output written."""
    row = cfg.n_head * cfg.head_dim * (torch.finfo(dtype).bits // 8)  # one token, all heads
    return batch * row * (2 * (ctx + q_len) + 3 * q_len + 2 * q_len + q_len)


def graph_time(fn, reps: int) -> float | None:
    """Per-call time replayed from a captured CUDA graph, or None when capture fails (reported, not fatal)."""
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()  # warm-up (compilation) outside the capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
    except RuntimeError as e:
        print(f"  CUDA graph capture failed: {str(e).splitlines()[0]}")
        return None
    return cuda_time(graph.replay, reps)


def sampling_rows(batch: int, k: int, reps: int) -> dict:
    """Seconds per accept step (warp + accept) for batch sequences of k drafts: Triton on the GPU vs the torch
    warp on the GPU and the torch accept on host copies (it draws from a CPU generator), as the engine would."""
    from specdec.kernels import triton_sampling
    V, N = 1025, batch * (k + 1)
    params = [SamplingParams()] * N
    logits = torch.randn(N, V, device="cuda") * 3
    seen = torch.rand(batch, V, device="cuda") < 0.05
    tokens = torch.randint(0, V - 1, (N,), device="cuda")
    query_start_loc = torch.arange(0, N + 1, k + 1, dtype=torch.int32, device="cuda")
    ban = torch.zeros(N, dtype=torch.bool, device="cuda")
    row_params = triton_sampling.row_params(params, V, "cuda")
    q = torch.softmax(torch.randn(N, V, device="cuda"), -1)
    uniform, noise = torch.rand(N, device="cuda"), torch.empty(batch, V, device="cuda").exponential_()
    drafts = tokens.view(batch, k + 1)[:, 1:].tolist()

    def triton_step():
        probs, argmax_eos = triton_sampling.warp(logits, seen, tokens, query_start_loc, ban, *row_params)
        triton_sampling.accept(probs, q, tokens, argmax_eos, ban, uniform, noise, query_start_loc).tolist()

    def torch_step():
        rows = torch.cat([seen_block(seen[b], tokens[b * (k + 1) + 1:(b + 1) * (k + 1)]) for b in range(batch)])
        probs, argmax_eos = warp(logits, rows, ban, params)
        probs, argmax_eos, q_host = probs.cpu(), argmax_eos.cpu(), q.cpu()
        for b in range(batch):
            r = slice(b * (k + 1), (b + 1) * (k + 1))
            accept(probs[r], q_host[r][:k], drafts[b], argmax_eos[r], [False] * (k + 1), V - 1, None)

    return {"batch": batch, "k": k, "triton_s": cuda_time(triton_step, reps), "torch_s": cuda_time(torch_step, reps)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--page-size", type=int, default=64)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("skipped: no CUDA device (the Triton kernels are tested on CPU by tests/test_triton_kernels.py)")
        return 0
    from specdec.kernels import triton_attention

    cfg, dtype = GPTConfig(), DTYPES[args.dtype]  # v2: 16 heads × 32 dims
    bw_copy = copy_bandwidth(args.reps)
    device = torch.cuda.get_device_name()
    print(f"{device}, {args.dtype}, H={cfg.n_head} D={cfg.head_dim} page={args.page_size}; "
          f"device copy {bw_copy / 1e9:.0f} GB/s")
    print(f"{'mode':8} {'B':>3} {'q':>4} {'ctx':>5} {'triton µs':>10} {'graph µs':>9} {'torch µs':>9} "
          f"{'MB':>7} {'GB/s':>7} {'% copy':>7}")
    rows = []
    for case in CASES:
        meta, q, k, v, k_cache, v_cache = setup(*case, cfg, dtype, args.page_size)

        def triton_call():
            triton_attention.paged_attention(q, k, v, k_cache, v_cache, meta)

        def torch_call():
            store_kv_torch(k, v, k_cache, v_cache, meta.slot_mapping)
            paged_attention_torch(q, k_cache, v_cache, meta)

        t_triton = cuda_time(triton_call, args.reps)
        t_graph = graph_time(triton_call, args.reps)
        t_torch = cuda_time(torch_call, args.reps)
        mode, batch, q_len, ctx, _ = case
        nbytes = min_bytes(batch, q_len, ctx, cfg, dtype)
        bw = nbytes / t_triton
        graph = f"{t_graph * 1e6:9.1f}" if t_graph is not None else f"{'-':>9}"
        print(f"{mode:8} {batch:3d} {q_len:4d} {ctx:5d} {t_triton * 1e6:10.1f} {graph} {t_torch * 1e6:9.1f} "
              f"{nbytes / 1e6:7.2f} {bw / 1e9:7.1f} {100 * bw / bw_copy:6.1f}%")
        rows.append({"mode": mode, "batch": batch, "q_len": q_len, "context": ctx, "triton_s": t_triton,
                     "graph_s": t_graph, "torch_s": t_torch, "min_bytes": nbytes, "bandwidth_Bps": bw})
    print(f"\n{'sampling':8} {'B':>3} {'k':>4} {'triton µs':>10} {'torch µs':>9}")
    sampling = [sampling_rows(b, k, args.reps) for b, k in ((1, 0), (1, 4), (8, 4), (32, 0))]
    for r in sampling:
        print(f"{'':8} {r['batch']:3d} {r['k']:4d} {r['triton_s'] * 1e6:10.1f} {r['torch_s'] * 1e6:9.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "device": device, "dtype": args.dtype, "page_size": args.page_size,
                       "copy_bandwidth_Bps": bw_copy, "cases": rows, "sampling": sampling}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
