"""Benchmark harness: every contender in one process, interleaved, warm-up then repeats, medians with spread.

A contender is a named callable that generates the semantic tokens of one request and returns how many it
produced. Rounds run every contender once in a rotating order, so slow drifts of a shared machine (other
processes, thermal state) hit all of them alike; ratios are taken between medians measured in the same rounds.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

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
    up_t, ours_t = timings["upstream infer_panel_naive"].summary(), timings["specdec AR"].summary()
    return {"machine": machine(), "shape": shape, "n_tokens": n_tokens, "n_phones": phones.numel(),
            "n_prompt": prompt.numel(), "results": [as_dict(t) for t in timings.values()],
            "speedup_median": ours_t["tokens_per_s_median"] / up_t["tokens_per_s_median"]}


# ---- speculative sweep: every draft kind × k, against the autoregressive path (and upstream) -------------------
def spec_sweep(target, drafts: dict, ks: list[int], requests: list, repeats: int = 3, warmup: int = 1,
               upstream: bool = False, progress=None) -> dict:
    """tokens/s and acceptance of specdec AR, upstream (optional) and every (draft, k), interleaved."""
    from specdec.engine import Engine
    stats: dict[str, list] = {}

    def runner(engine: Engine, name: str):
        def run() -> int:
            outs = [engine.generate([r])[0] for r in requests]
            stats.setdefault(name, []).extend(o.stats for o in outs)
            return sum(len(o.tokens) for o in outs)
        return run

    contenders = {"AR": runner(Engine(target), "AR")}
    for dname, draft in drafts.items():
        for k in ks:
            contenders[f"{dname} k={k}"] = runner(Engine(target, draft, k=k), f"{dname} k={k}")
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
    rows = []
    for name, t in timings.items():
        row = t.summary()
        row["speedup_vs_AR"] = row["tokens_per_s_median"] / ar
        if name in stats:
            merged = stats[name][0]
            for s in stats[name][1:]:
                merged = merged.merge(s)
            row.update(mean_acceptance_length=merged.mean_acceptance_length,
                       draft_acceptance_rate=merged.draft_acceptance_rate,
                       acceptance_per_position=merged.acceptance_per_position,
                       target_passes=merged.target_passes, draft_s=merged.draft_s, verify_s=merged.verify_s)
        rows.append(row)
    return {"machine": machine(), "target": target.cfg.to_dict(), "ks": ks, "drafts": list(drafts),
            "n_requests": len(requests), "rows": rows}


def markdown_table(res: dict) -> str:
    m = res["machine"]
    lines = [f"GPT-only, {m['cpu']} ({m['cores']} cores), torch {m['torch']}, {m['date']}", "",
             "| config | tok/s (median) | IQR | × AR | mean acceptance length | acceptance per position |",
             "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        acc = " ".join(f"{a:.2f}" for a in r.get("acceptance_per_position", []))
        mal = f"{r['mean_acceptance_length']:.2f}" if "mean_acceptance_length" in r and acc else "–"
        lines.append(f"| {r['name']} | {r['tokens_per_s_median']:.1f} | {r['tokens_per_s_q1']:.1f}–"
                     f"{r['tokens_per_s_q3']:.1f} | {r['speedup_vs_AR']:.2f} | {mal} | {acc or '–'} |")
    return "\n".join(lines) + "\n"


def plots(res: dict, outdir: str) -> list[str]:
    """speedup vs k per draft kind; acceptance per position at each draft kind's best k."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = {r["name"]: r for r in res["rows"]}
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for d in res["drafts"]:
        ks = [k for k in res["ks"] if f"{d} k={k}" in rows]
        ax.plot(ks, [rows[f"{d} k={k}"]["speedup_vs_AR"] for k in ks], marker="o", label=d)
    if "upstream infer_panel_naive" in rows:
        ax.axhline(rows["upstream infer_panel_naive"]["speedup_vs_AR"], color="grey", ls="--", label="upstream")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set(xlabel="draft tokens per round (k)", ylabel="GPT tokens/s ÷ specdec AR", title="Speedup vs k")
    ax.legend()
    paths.append(os.path.join(outdir, "speedup_vs_k.png"))
    fig.tight_layout()
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
