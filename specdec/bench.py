"""Benchmark harness: every contender in one process, interleaved, warm-up then repeats, medians with spread.

A contender is a named callable that generates the semantic tokens of one request and returns how many it
produced. Rounds run every contender once in a rotating order, so slow drifts of a shared machine (other
processes, thermal state) hit all of them alike; ratios are taken between medians measured in the same rounds.
"""
from __future__ import annotations

import datetime
import functools
import itertools
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import torch

from specdec.stats import SpecStats

Contender = Callable[[], int]  # runs one request, returns tokens generated


@dataclass
class Timing:
    name: str
    seconds: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> list[float]:
        return [n / s for n, s in zip(self.tokens, self.seconds)]

    def summary(self) -> dict:
        tps = sorted(self.tokens_per_s)
        q = statistics.quantiles(tps, n=4, method="inclusive") if len(tps) >= 2 else [tps[0]] * 3
        return {"name": self.name, "tokens_per_s_median": statistics.median(tps), "tokens_per_s_q1": q[0],
                "tokens_per_s_q3": q[2], "runs": len(tps), "tokens_median": statistics.median(self.tokens),
                "seconds_median": statistics.median(self.seconds), **self.extra}


def run_interleaved(contenders: dict[str, Contender], repeats: int = 5, warmup: int = 1,
                    progress: Callable[[str], None] | None = None) -> dict[str, Timing]:
    timings = {name: Timing(name) for name in contenders}
    names = list(contenders)
    for r in range(warmup + repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            if progress:
                progress(f"{'warm-up' if r < warmup else f'round {r - warmup + 1}/{repeats}'}: {name}")
            t = time.perf_counter()
            n = contenders[name]()
            dt = time.perf_counter() - t
            if r >= warmup:
                timings[name].seconds.append(dt)
                timings[name].tokens.append(n)
    return timings


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load_avg_1min": os.getloadavg()[0]}  # > cores: other work shared the CPU (ratios still hold, interleaved)


def write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)


def as_dict(t: Timing) -> dict:
    return {**t.summary(), "raw": asdict(t)}


# ---- GPT-only: specdec vs upstream at a real shape with random weights ----------------------------------------
SHAPES = {"v2": dict(n_layer=24, d_model=512, n_head=16, phoneme_vocab_size=732),
          "v1": dict(n_layer=24, d_model=512, n_head=16, phoneme_vocab_size=512),
          "s1": dict(n_layer=12, d_model=512, n_head=16, phoneme_vocab_size=732)}


def random_target(shape: str = "v2", seed: int = 0):
    """A GPT of a real upstream shape with random weights rounded to fp16, as every released checkpoint is (so
    upstream, computing in fp32, and specdec run the very same model)."""
    from specdec.models.gpt import GPT, GPTConfig
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(**SHAPES[shape]))
    with torch.no_grad():
        for name, p in gpt.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape) / p.shape[-1] ** 0.5)
            p.copy_(p.half().float())
    return gpt.eval()


def fixed_request(n_phones: int = 70, n_prompt: int = 150, phoneme_vocab_size: int = 732, seed: int = 0):
    """A stand-in for one sentence: ~70 phones (prompt text + target text), a 6 s reference (150 tokens)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, phoneme_vocab_size, (n_phones,), generator=g),
            torch.randint(0, 1024, (n_prompt,), generator=g))


def ar_vs_upstream(shape: str = "v2", n_tokens: int = 150, repeats: int = 5, warmup: int = 1, progress=None) -> dict:
    """specdec's autoregressive path against upstream `infer_panel_naive`, same weights, same request."""
    import specdec
    from specdec.upstream import upstream_t2s
    gpt = random_target(shape)
    up = upstream_t2s(gpt.cfg, gpt.state_dict())
    phones, prompt = fixed_request(phoneme_vocab_size=gpt.cfg.phoneme_vocab_size)
    bert = torch.zeros(1, 1024, phones.numel())

    def ours() -> int:
        return len(specdec.generate(gpt, phones, prompt, top_k=15, max_new_tokens=n_tokens, seed=0).tokens)

    def upstream() -> int:
        with torch.no_grad():
            y, _ = next(up.infer_panel_naive(phones[None], torch.tensor([phones.numel()]), prompt[None], bert,
                                             top_k=15, top_p=1.0, early_stop_num=n_tokens - 1, temperature=1.0,
                                             repetition_penalty=1.35))
        return y.shape[1] - prompt.numel()

    timings = run_interleaved({"upstream infer_panel_naive": upstream, "specdec AR": ours}, repeats, warmup,
                              progress)
    up, us = timings["upstream infer_panel_naive"], timings["specdec AR"]
    # each round runs both back to back: the ratio within a round cancels the machine's drift between rounds
    paired = sorted(a / b for a, b in zip(us.tokens_per_s, up.tokens_per_s))
    q = statistics.quantiles(paired, n=4, method="inclusive") if len(paired) >= 2 else paired * 3
    return {"machine": machine(), "shape": shape, "n_tokens": n_tokens, "n_phones": phones.numel(),
            "n_prompt": prompt.numel(), "results": [as_dict(t) for t in timings.values()],
            "speedup_median": us.summary()["tokens_per_s_median"] / up.summary()["tokens_per_s_median"],
            "speedup_paired": {"median": statistics.median(paired), "q1": q[0], "q3": q[2]}}


def _block_linears(gpt) -> list:
    """The 4 matmuls of every block, in execution order (the 96 of a v2 decode step)."""
    return [m for b in gpt.layers for m in (b.qkv, b.out, b.ffn_in, b.ffn_out)]


def _decode_cache(gpt, context: int, rows: int):
    """Pages of K/V written for `context` + `rows` tokens by `gpt`, and meta(n): the metadata of a pass of n ≤ rows
    query rows over `context` cached tokens (every key it reads was written)."""
    from specdec.cache import PagePool
    from specdec.kernels import AttentionMetadata
    cfg, page, n_fill, prefix = gpt.cfg, 64, context + rows, min(70, context)  # 70 phones, as fixed_request
    pool = PagePool(-(-n_fill // page), page)
    kv = pool.new_kv(cfg.n_layer, cfg.n_head, cfg.head_dim)
    blocks = list(range(pool.num_blocks))
    with torch.inference_mode():
        gpt(torch.randn(n_fill, cfg.d_model), AttentionMetadata([n_fill], [n_fill], [prefix], [blocks], page), kv)
    return kv, lambda n: AttentionMetadata([n], [context + n], [prefix], [blocks], page)


def decode_floor(shape: str = "v2", context: int = 300, repeats: int = 15, progress=None) -> dict:
    """What one exact decode step (1 query row over `context` cached tokens) costs and cannot go below here.

    Measured, interleaved, medians (ms): the machine's streaming rate (an fp32 GEMV over 512 MiB, the fastest read
    torch does here); the target pass as generation runs it (the whole-block CPU kernel where it builds), the same
    pass op by op, and the pass over a 1-token cache (the difference is attention's share); the pass's matmuls
    alone, one call each (the exact fp16-weight path, and fp32 as upstream runs them). Derived: the bytes a step must
    read (weights as the kernels store them + every layer's K/V), the bandwidth floor (those bytes at the streaming
    rate) and the share of that rate the pass reaches."""
    exact = random_target(shape)
    fp32 = _fp32_copy(exact)
    cfg = exact.cfg
    kv, meta_for = _decode_cache(exact, context, 1)
    kv1, meta1_for = _decode_cache(exact, 1, 1)
    meta, meta1 = meta_for(1), meta1_for(1)
    x = torch.randn(1, cfg.d_model)
    big = torch.randn(4096, 2**27 // 4096)  # 512 MiB
    xb = torch.randn(1, 4096)

    def matmuls(gpt):
        lins = _block_linears(gpt) + [gpt.head]
        xs = {d: torch.randn(1, d) for d in (cfg.d_model, cfg.d_ff)}
        return lambda: [m(xs[m.in_features]) for m in lins]

    contenders = {"stream 512 MiB": lambda: xb @ big, "pass": lambda: exact.logits(exact(x, meta, kv)),
                  "pass, op by op": lambda: exact.logits(exact.layers.per_op(x, meta, kv)),
                  "pass, 1 cached token": lambda: exact.logits(exact(x, meta1, kv1)),
                  "fp16-exact matmuls": matmuls(exact), "fp32 matmuls": matmuls(fp32)}
    with torch.inference_mode():
        timings = run_interleaved({k: _one_unit(f) for k, f in contenders.items()}, repeats, 2, progress)
    ms = {k: 1e3 * statistics.median(t.seconds) for k, t in timings.items()}
    weights = sum(m.weight.numel() for m in _block_linears(exact) + [exact.head])
    mb = {"weights_fp16": 2 * weights / 1e6, "weights_fp32": 4 * weights / 1e6,
          "kv_fp32": 2 * cfg.n_layer * (context + 1) * cfg.d_model * 4 / 1e6}
    gbps = big.numel() * 4 / ms["stream 512 MiB"] / 1e6
    floor = (mb["weights_fp16"] + mb["kv_fp32"]) / gbps
    return {"machine": machine(), "shape": shape, "context": context, "repeats": repeats, "ms_median": ms,
            "stream_gb_per_s": gbps, "mb_per_step": mb, "bandwidth_floor_ms": floor,
            "upstream_bandwidth_floor_ms": (mb["weights_fp32"] + mb["kv_fp32"]) / gbps,
            "attention_ms": ms["pass"] - ms["pass, 1 cached token"], "rate_share": floor / ms["pass"]}


def floor_text(f: dict, upstream_ms: float) -> str:
    """decode_floor's result in words, against upstream's measured time per token."""
    ms, mb = f["ms_median"], f["mb_per_step"]
    return (f"Where a decode step goes (1 row over {f['context']} cached tokens, `specdec.bench.decode_floor`): the "
            f"pass takes {ms['pass']:.2f} ms ({ms['pass, op by op']:.2f} ms op by op in torch), of which attention "
            f"over the {f['context']} keys ≈ {f['attention_ms']:.2f} (the pass over 1 cached token: "
            f"{ms['pass, 1 cached token']:.2f}); its matmuls alone, one call each, take {ms['fp16-exact matmuls']:.2f} "
            f"exact from fp16 weights ({ms['fp32 matmuls']:.2f} in fp32, as upstream runs them). The step must read "
            f"{mb['weights_fp16']:.0f} MB of weights and {mb['kv_fp32']:.0f} MB of K/V; torch streams "
            f"{f['stream_gb_per_s']:.1f} GB/s here, so no exact step beats {f['bandwidth_floor_ms']:.2f} ms: the pass "
            f"reads at {100 * f['rate_share']:.0f}% of that rate. Against upstream's {upstream_ms:.2f} ms per token "
            f"that caps specdec's AR at {upstream_ms / f['bandwidth_floor_ms']:.2f}× (today's pass alone: "
            f"{upstream_ms / ms['pass']:.2f}×; sampling and embedding come on top).")


# ---- speculative sweep: every draft kind × k, against the autoregressive path (and upstream) -------------------
ECO = "eco AR (int8 target, lossy)"


def eco_draft_names(drafts: dict) -> list[str]:
    """The drafts (name → draft) the bench also runs over the eco target: all but int8 copies of the target
    (`int8`, `int8:N`)."""
    from specdec.drafters import int8_copy_of_target
    return [name for name, d in drafts.items() if not (isinstance(d, str) and int8_copy_of_target(d))]


def latency(stats: list[SpecStats]) -> dict:
    """Medians over requests of vLLM's time to first token and time per output token after it (TPOT). Speculation
    shortens only the second: the prefill (TTFT) is the same pass with or without a draft."""
    tpot = [(s.wall_s - s.ttft_s) / (s.num_emitted_tokens - 1) for s in stats if s.num_emitted_tokens > 1]
    return {"ttft_ms_median": 1e3 * statistics.median(s.ttft_s for s in stats),
            "tpot_ms_median": 1e3 * statistics.median(tpot) if tpot else float("nan")}


SEED_STRIDE = 1000  # call r of a contender samples a request seeded s with seed s + r · SEED_STRIDE


def _reseeded(r, shift: int):
    seed = r.params.seed
    return r if seed is None or not shift else replace(r, params=replace(r.params, seed=seed + shift))


def spec_sweep(target, drafts: dict, ks: list[int], requests: list, repeats: int = 3, warmup: int = 1,
               upstream: bool = False, eco: bool = False, progress=None,
               draft_temperatures: dict[str, float] | None = None, adaptive: bool = False) -> dict:
    """tokens/s and acceptance of specdec AR, upstream (optional) and every (draft, k), interleaved; with `eco` also
    the int8 target alone and every (draft, k) over it (lossy: their rows carry lossy=True; int8 copies of the target
    are left out there, the eco target being one already); with `adaptive` also every draft over the exact target
    with k chosen per round (specdec.adaptive) up to max(ks). draft_temperatures: per draft name, the engine's draft
    temperature (default: the draft's own). Each repeat samples with new seeds (the same for every contender), so
    acceptance is measured over len(requests) × (warmup + repeats) samples, not the same few again."""
    from specdec.engine import Engine
    stats: dict[str, list] = {}

    def runner(engine: Engine, name: str):
        calls = itertools.count()

        def run() -> int:
            shift = SEED_STRIDE * next(calls)
            outs = [engine.generate([_reseeded(r, shift)])[0] for r in requests]
            stats.setdefault(name, []).extend(o.stats for o in outs)
            return sum(len(o.tokens) for o in outs)
        return run

    temperature = (draft_temperatures or {}).get
    contenders = {"AR": runner(Engine(target), "AR")}
    for dname, draft in drafts.items():
        for k in ks:
            contenders[f"{dname} k={k}"] = runner(Engine(target, draft, k=k, draft_temperature=temperature(dname)),
                                                  f"{dname} k={k}")
        if adaptive:
            name = f"{dname} adaptive k≤{max(ks)}"
            contenders[name] = runner(Engine(target, draft, k=max(ks), adaptive=True,
                                             draft_temperature=temperature(dname)), name)
    eco_drafts = []
    if eco:
        from specdec.models.int8 import quantize_gpt
        eco_target = quantize_gpt(target)
        contenders[ECO] = runner(Engine(eco_target), ECO)
        eco_drafts = eco_draft_names(drafts)
        for dname in eco_drafts:
            for k in ks:
                name = f"eco {dname} k={k}"
                contenders[name] = runner(Engine(eco_target, drafts[dname], k=k,
                                                 draft_temperature=temperature(dname)), name)
    if upstream:
        from specdec.upstream import upstream_t2s
        up = upstream_t2s(target.cfg, target.state_dict())

        def run_upstream() -> int:
            n = 0
            for r in requests:
                x = r.phones[None]
                bert = torch.zeros(1, 1024, x.shape[1])
                with torch.no_grad():
                    y, _ = next(up.infer_panel_naive(x, torch.tensor([x.shape[1]]), r.prompt[None], bert,
                                                     top_k=r.params.top_k, top_p=r.params.top_p,
                                                     early_stop_num=r.params.max_new_tokens - 1,
                                                     temperature=r.params.temperature,
                                                     repetition_penalty=r.params.repetition_penalty))
                n += y.shape[1] - r.prompt.numel()
            return n
        contenders["upstream infer_panel_naive"] = run_upstream
    timings = run_interleaved(contenders, repeats, warmup, progress)
    ar = timings["AR"].summary()["tokens_per_s_median"]
    timed = len(requests) * warmup  # the warm-up calls' stats come first
    rows = []
    for name, t in timings.items():
        row = t.summary()
        row["speedup_vs_AR"] = row["tokens_per_s_median"] / ar
        if name in stats:
            merged = functools.reduce(SpecStats.merge, stats[name])
            row.update(mean_acceptance_length=merged.mean_acceptance_length,
                       draft_acceptance_rate=merged.draft_acceptance_rate,
                       acceptance_per_position=merged.acceptance_per_position,
                       target_passes=merged.target_passes, draft_s=merged.draft_s, verify_s=merged.verify_s,
                       lossy=merged.lossy, **latency(stats[name][timed:]))
        rows.append(row)
    ar_tpot = next(r for r in rows if r["name"] == "AR")["tpot_ms_median"]
    for row in rows:
        if "tpot_ms_median" in row:
            row["tpot_speedup_vs_AR"] = ar_tpot / row["tpot_ms_median"]
    return {"machine": machine(), "target": target.cfg.to_dict(), "ks": ks, "drafts": list(drafts),
            "draft_temperatures": {d: temperature(d) for d in drafts}, "eco_drafts": eco_drafts,
            "n_requests": len(requests), "rows": rows}


# ---- end to end: text → audio through the pipeline, streaming -------------------------------------------------
BENCH_TEXTS = (  # a fixed set, none of them in the demo corpus
    "The quick brown fox jumps over the lazy dog.",
    "Speculative decoding makes the same speech sooner.",
    "Please call me back before noon tomorrow.",
    "A small draft proposes, and the full model decides.",
    "Every morning the baker opens the shop at six.",
    "Rain is expected in the north later this week.",
    "She read the letter twice and smiled.",
    "Turn left at the second light and park behind the school.",
)


def end_to_end(configs: dict, voice, texts=BENCH_TEXTS, repeats: int = 3, warmup: int = 1, progress=None) -> dict:
    """configs: name → specdec.pipeline.TTS. Every text is synthesised with streaming decode; per config the
    medians over (repeats × texts) of time to first audio, real-time factor and each stage's seconds."""
    from specdec.pipeline import synthesize
    from specdec.sampling import SamplingParams
    stats: dict[str, list] = {name: [] for name in configs}

    def runner(name, tts):
        def run() -> int:
            n = 0
            for i, text in enumerate(texts):
                _, st = synthesize(text, tts, voice, streaming=True, params=SamplingParams(seed=i))
                stats[name].append(st)
                n += st.gpt.num_emitted_tokens
            return n
        return run
    timings = run_interleaved({name: runner(name, tts) for name, tts in configs.items()}, repeats, warmup, progress)
    rows = []
    for name, t in timings.items():
        runs = stats[name][warmup * len(texts):]
        med = {key: statistics.median(getattr(st, key) for st in runs)
               for key in ("first_chunk_s", "rtf", "gpt_tokens_per_s", "frontend_s", "gpt_s", "decode_s", "audio_s")}
        gpt = functools.reduce(SpecStats.merge, (st.gpt for st in runs))
        rows.append({"name": name, **med, "mean_acceptance_length": gpt.mean_acceptance_length if gpt.num_drafts
                     else None, "acceptance_per_position": gpt.acceptance_per_position})
    return {"machine": machine(), "texts": list(texts), "voice": voice.name, "rows": rows}


def markdown_e2e(res: dict) -> str:
    m = res["machine"]
    lines = [f"End to end (text → 16/32 kHz audio, streaming), voice {res['voice']}, {len(res['texts'])} sentences, "
             f"{m['cpu']} ({m['cores']} cores), {m['date']}, load average {m.get('load_avg_1min', float('nan')):.1f}",
             "",
             "| config | first audio (s) | real-time factor | GPT tok/s | front-end / GPT / decoder s per sentence "
             "| mean acceptance length |", "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        mal = f"{r['mean_acceptance_length']:.2f}" if r["mean_acceptance_length"] else "–"
        lines.append(f"| {r['name']} | {r['first_chunk_s']:.3f} | {r['rtf']:.3f} | {r['gpt_tokens_per_s']:.1f} | "
                     f"{r['frontend_s']:.3f} / {r['gpt_s']:.3f} / {r['decode_s']:.3f} | {mal} |")
    return "\n".join(lines) + "\n"


def markdown_table(res: dict) -> str:
    m = res["machine"]
    lines = [f"GPT-only, {m['cpu']} ({m['cores']} cores), torch {m['torch']}, {m['date']}, "
             f"load average {m.get('load_avg_1min', float('nan')):.1f}", "",
             "| config | tok/s (median) | IQR | × AR | TTFT ms | TPOT ms (× AR) | mean acceptance length | "
             "acceptance per position |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        acc = " ".join(f"{a:.2f}" for a in r.get("acceptance_per_position", []))
        mal = f"{r['mean_acceptance_length']:.2f}" if "mean_acceptance_length" in r and acc else "–"
        name = r["name"] + (" **LOSSY**" if r.get("lossy") else "")
        ttft = f"{r['ttft_ms_median']:.0f}" if "ttft_ms_median" in r else "–"
        tpot = f"{r['tpot_ms_median']:.2f} ({r['tpot_speedup_vs_AR']:.2f})" if "tpot_speedup_vs_AR" in r else "–"
        lines.append(f"| {name} | {r['tokens_per_s_median']:.1f} | {r['tokens_per_s_q1']:.1f}–"
                     f"{r['tokens_per_s_q3']:.1f} | {r['speedup_vs_AR']:.2f} | {ttft} | {tpot} | {mal} | "
                     f"{acc or '–'} |")
    return "\n".join(lines) + "\n"


def plots(res: dict, outdir: str) -> list[str]:
    """speedup vs k per draft kind; acceptance per position at each draft kind's best k."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = {r["name"]: r for r in res["rows"]}
    paths = []
    tpot = "tpot_speedup_vs_AR" in rows["AR"]  # results written before TPOT was measured have only tokens/s
    fig, axes = plt.subplots(1, 2 if tpot else 1, figsize=(11 if tpot else 6, 4), squeeze=False)
    for ax, key, what, title in [
            (axes[0][0], "speedup_vs_AR", "GPT tokens/s ÷ specdec AR (prefill included)", "Speedup vs k: tokens/s"),
            (axes[0][-1], "tpot_speedup_vs_AR", "AR's time per output token ÷ config's",
             "Speedup vs k: time per output token")][:1 + tpot]:
        for d in res["drafts"] + [f"eco {d}" for d in res.get("eco_drafts", [])]:
            ks = [k for k in res["ks"] if f"{d} k={k}" in rows]
            line, = ax.plot(ks, [rows[f"{d} k={k}"][key] for k in ks], marker="o", label=d,
                            ls="--" if d.startswith("eco ") else "-")
            adaptive = rows.get(f"{d} adaptive k≤{max(res['ks'])}")
            if adaptive is not None:  # k chosen per round, up to the sweep's largest: drawn at that k
                ax.plot([max(res["ks"])], [adaptive[key]], marker="*", ms=12, ls="none", color=line.get_color(),
                        label=f"{d} adaptive")
        if key in rows.get("upstream infer_panel_naive", {}):
            ax.axhline(rows["upstream infer_panel_naive"][key], color="grey", ls="--", label="upstream")
        if ECO in rows:
            ax.axhline(rows[ECO][key], color="tab:red", ls=":", label="eco (int8 target, lossy)")
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set(xlabel="draft tokens per round (k)", ylabel=what, title=title)
    # one legend for both panels, below them: inside, a sweep's many lines hide the data
    handles, labels = axes[0][0].get_legend_handles_labels()
    ncol = 3 if tpot else 2
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize="small", frameon=False)
    rows_below = -(-len(labels) // ncol)
    fig.set_figheight(4 + 0.22 * rows_below)
    paths.append(os.path.join(outdir, "speedup_vs_k.png"))
    fig.tight_layout(rect=(0, 0.22 * rows_below / (4 + 0.22 * rows_below) + 0.02, 1, 1))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for d in res["drafts"]:
        cands = [rows[f"{d} k={k}"] for k in res["ks"] if f"{d} k={k}" in rows]
        best = max(cands, key=lambda r: r["speedup_vs_AR"])
        acc = best.get("acceptance_per_position", [])
        ax.plot(range(1, len(acc) + 1), acc, marker="o", label=f"{best['name']}")
    ax.set(xlabel="draft position", ylabel="fraction of rounds accepted", ylim=(0, 1),
           title="Acceptance per position (best k per draft)")
    ax.legend()
    paths.append(os.path.join(outdir, "acceptance_per_position.png"))
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


# ---- int8: cost per step, distance to fp32 ---------------------------------------------------------------------
def _fp32_copy(gpt):
    """The same model forced onto the fp32 GEMM (the fp16-weight GEMM switched off)."""
    import copy

    from specdec.models.linear import Linear
    out = copy.deepcopy(gpt)
    for m in out.modules():
        if isinstance(m, Linear):
            m.allow_fp16_gemm = False
    return out


def _torchao_block_linears(gpt, config_name: str):
    """nn.Linear copies of the block matmuls quantised by torchao (for comparison only; None if not installed)."""
    try:
        import torchao
        from torchao import quantization as tq
    except ImportError:
        return None, None
    lins = []
    for m in _block_linears(gpt):
        lin = torch.nn.Linear(m.in_features, m.out_features)
        with torch.no_grad():
            lin.weight.copy_(m.weight)
            lin.bias.copy_(m.bias)
        tq.quantize_(lin, getattr(tq, config_name)())
        lins.append(lin)
    return lins, torchao.__version__


def _one_unit(f):
    """A contender for run_interleaved (which counts tokens) that times one step."""
    def run() -> int:
        f()
        return 1
    return run


def step_costs(shape: str = "v2", rows: tuple[int, ...] = (1, 5), context: int = 300, repeats: int = 15,
               progress=None) -> dict:
    """ms per step at n query rows of one sequence: the 96 block matmuls alone (distinct weights per layer, as the
    real model has) and a whole target pass over `context` cached tokens, for fp32, the exact fp16-weight GEMM,
    int8 (specdec.models.int8: W8A8) and, when installed, torchao's int8 configs. Medians of interleaved
    repeats."""
    import warnings

    from specdec.models.int8 import quantize_gpt
    exact = random_target(shape)
    models = {"fp32": _fp32_copy(exact), "fp16-exact": exact, "int8": quantize_gpt(exact)}
    cfg = exact.cfg
    xs = {n: {d: torch.randn(n, d) for d in (cfg.d_model, cfg.d_ff)} for n in rows}

    def matmuls(fns, n):
        x = xs[n]

        def run():
            for f, d in fns:
                f(x[d])
        return run

    contenders, versions = {}, {}
    for n in rows:
        for name, gpt in models.items():
            contenders[f"{name} matmuls n={n}"] = matmuls([(m, m.in_features) for m in _block_linears(gpt)], n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cfg_name in ("Int8WeightOnlyConfig", "Int8DynamicActivationInt8WeightConfig"):
            lins, version = _torchao_block_linears(exact, cfg_name)
            if lins is not None:
                versions["torchao"] = version
                for n in rows:
                    contenders[f"torchao {cfg_name} matmuls n={n}"] = matmuls([(m, m.in_features) for m in lins], n)
    kv, meta_for = _decode_cache(models["fp32"], context, max(rows))
    for n in rows:
        meta = meta_for(n)
        x = torch.randn(n, cfg.d_model)
        for name, gpt in models.items():
            contenders[f"{name} target pass n={n}"] = (lambda g=gpt, m=meta, x=x: g.logits(g(x, m, kv)))
    with torch.inference_mode():
        timings = run_interleaved({k: _one_unit(f) for k, f in contenders.items()}, repeats, 2, progress)
    ms = {k: 1e3 * statistics.median(t.seconds) for k, t in timings.items()}
    iqr = {k: [1e3 * q for q in statistics.quantiles(t.seconds * 2 if len(t.seconds) < 2 else t.seconds,
                                                     n=4, method="inclusive")[::2]] for k, t in timings.items()}
    return {"machine": machine(), "shape": shape, "context": context, "rows": list(rows), "repeats": repeats,
            "versions": versions, "ms_median": ms, "ms_iqr": iqr}


def int8_distance(exact, sequences: list, top_k: int = 15) -> dict:
    """Total-variation distance between the next-token distributions of `exact` and of its int8 copy (eco mode's
    target) at every generated position of `sequences` — (phones, prompt, generated tokens) triples, teacher-forced
    through both: raw softmax and the top-k renormalised one (the sampler's support at upstream's defaults)."""
    from specdec.models.gpt import prefix_lm_mask
    from specdec.models.int8 import quantize_gpt
    q = quantize_gpt(exact)

    def logits(gpt, phones, prompt, out):  # [len(out) + 1, V]: every generated step, and the one after
        y = torch.cat([prompt, out])
        x = torch.cat([gpt.embed_text(phones), gpt.embed_audio(y, torch.arange(len(y)))])[None]
        T = x.shape[1]
        h = gpt.forward_dense(x, prefix_lm_mask(torch.tensor([phones.numel()]), torch.tensor([T]), T))[0]
        return gpt.logits(h[phones.numel() + prompt.numel() - 1:])

    with torch.inference_mode():
        pairs = [(logits(exact, *s), logits(q, *s)) for s in sequences]
    a, b = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])

    def tv(la, lb):
        return 0.5 * (la.softmax(-1) - lb.softmax(-1)).abs().sum(-1)

    def topk_logits(lg):
        kth = lg.topk(top_k, -1).values[:, -1:]
        return lg.masked_fill(lg < kth, float("-inf"))

    def summary(t):
        return {"mean": float(t.mean()), "median": float(t.median()), "p90": float(t.quantile(0.9)),
                "max": float(t.max())}

    return {"machine": machine(), "sequences": len(sequences), "positions": a.shape[0],
            "tv_softmax": summary(tv(a, b)), f"tv_top{top_k}": summary(tv(topk_logits(a), topk_logits(b))),
            "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
            "max_prob_fp32_median": float(a.softmax(-1).amax(-1).median())}


def random_int8_distance(shape: str = "v2", n_tokens: int = 150, top_k: int = 15) -> dict:
    """`int8_distance` on a random target of a real shape, over one sequence it generates from `fixed_request`."""
    import specdec
    exact = random_target(shape)
    phones, prompt = fixed_request(phoneme_vocab_size=exact.cfg.phoneme_vocab_size)
    out = specdec.generate(exact, phones, prompt, top_k=top_k, max_new_tokens=n_tokens, seed=0).tokens
    return {**int8_distance(exact, [(phones, prompt, out)], top_k), "shape": shape, "weights": "random, fp16-exact"}
