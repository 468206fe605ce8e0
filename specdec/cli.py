"""`specdec` command line: bench, convert, info (synth, distill and voice join as their pieces land).

Every user error is one line on stderr and a non-zero exit; `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from specdec.errors import SpecdecError

EXIT_USER_ERROR = 2


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="GPT tokens/s: AR vs every draft kind and a k sweep (vs upstream if installed)")
    p.add_argument("--shape", choices=["v2", "v1", "s1"], default=None,
                   help="time a real upstream shape with random weights (cost only: acceptance is meaningless)")
    p.add_argument("--gpt", help="target GPT file (upstream .ckpt or specdec .safetensors)")
    p.add_argument("--draft", action="append", default=None,
                   help="draft to sweep: a GPT file, layerskip:N or ngram (repeatable)")
    p.add_argument("--k", default="2,4,6,8", help="comma-separated draft lengths to sweep")
    p.add_argument("--tokens", type=int, default=150, help="max new tokens per request")
    p.add_argument("--requests", type=int, default=2, help="requests in the fixed set")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--no-upstream", action="store_true", help="skip upstream infer_panel_naive")
    p.add_argument("-o", "--out", default="bench/results", help="folder for JSON, Markdown and PNG plots")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> None:
    import torch
    from rich.console import Console
    from rich.progress import Progress

    from specdec import bench
    from specdec.engine import Request
    from specdec.models.checkpoint import load_gpt
    from specdec.sampling import SamplingParams
    ks = _int_list(args.k, "--k")
    if (args.shape is None) == (args.gpt is None):
        raise SpecdecError("give exactly one of --shape (random weights) or --gpt FILE")
    target = bench.random_target(args.shape) if args.shape else load_gpt(args.gpt)
    drafts = {d: (d if d == "ngram" or d.startswith("layerskip:") else load_gpt(d))
              for d in (args.draft or (["layerskip:4", "layerskip:8", "ngram"] if args.shape else ["ngram"]))}
    params = SamplingParams(max_new_tokens=args.tokens, seed=0)
    requests = [Request(*bench.fixed_request(phoneme_vocab_size=target.cfg.phoneme_vocab_size, seed=i),
                        params=SamplingParams(**{**params.__dict__, "seed": i})) for i in range(args.requests)]
    upstream = not args.no_upstream and _upstream_importable()
    n_configs = 1 + len(drafts) * len(ks) + upstream
    console = Console(stderr=True)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("bench", total=n_configs * (args.repeats + args.warmup))

        def step(msg: str) -> None:
            progress.update(task, advance=1, description=msg)
        res = bench.spec_sweep(target, drafts, ks, requests, args.repeats, args.warmup, upstream, step)
    os.makedirs(args.out, exist_ok=True)
    tag = args.shape or os.path.splitext(os.path.basename(args.gpt))[0]
    res["source"] = {"shape": args.shape, "gpt": args.gpt, "drafts": list(drafts), "tokens": args.tokens}
    bench.write_json(os.path.join(args.out, f"bench_{tag}.json"), res)
    md = bench.markdown_table(res)
    with open(os.path.join(args.out, f"bench_{tag}.md"), "w") as f:
        f.write(md)
    outdir = os.path.join(args.out, f"bench_{tag}")
    os.makedirs(outdir, exist_ok=True)
    pngs = bench.plots(res, outdir)
    Console().print(md)
    console.print(f"wrote {os.path.join(args.out, f'bench_{tag}.json')}, .md and {', '.join(pngs)}")
    del torch


def _upstream_importable() -> bool:
    try:
        from specdec.upstream import import_upstream
        import_upstream("AR.models.t2s_model")
        return True
    except (SpecdecError, ImportError):
        return False


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="upstream GPT .ckpt → specdec .safetensors (weights + config)")
    p.add_argument("src")
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--dtype", choices=["float32", "float16"], default="float16",
                   help="storage dtype (upstream checkpoints are fp16: converting to fp16 loses nothing)")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args) -> None:
    import torch

    from specdec.models.checkpoint import load_gpt, save_gpt
    gpt = load_gpt(args.src)
    dtype = getattr(torch, args.dtype)
    lossy = any(not torch.equal(p.to(dtype).float(), p) for p in gpt.state_dict().values())
    if lossy:
        print(f"note: {args.src} holds weights that {args.dtype} rounds; use --dtype float32 to keep them exactly",
              file=sys.stderr)
    save_gpt(gpt, args.out, dtype=dtype)
    print(f"wrote {args.out}")


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="what a checkpoint holds: kind, version, shapes, symbol set")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)


def cmd_info(args) -> None:
    from specdec.models.checkpoint import load_gpt
    gpt = load_gpt(args.file)
    c = gpt.cfg
    n_params = sum(p.numel() for p in gpt.parameters())
    info = {"file": args.file, "kind": "GPT (text-to-semantic)", **c.to_dict(), "parameters": n_params,
            "symbol_set": {512: "v1 (322 symbols)", 732: "v2 (732 symbols)"}.get(c.phoneme_vocab_size, "custom"),
            "fp16_exact": all(bool((p.half().float() == p).all()) for p in gpt.parameters())}
    if args.json:
        print(json.dumps(info))
        return
    from rich.console import Console
    from rich.table import Table
    t = Table(title=os.path.basename(args.file), show_header=False)
    for k, v in info.items():
        t.add_row(k, f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v))
    Console().print(t)


def _int_list(s: str, flag: str) -> list[int]:
    try:
        xs = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise SpecdecError(f"{flag}: expected comma-separated integers, got {s!r}") from None
    if not xs or any(x < 1 or x > 16 for x in xs):
        raise SpecdecError(f"{flag}: draft lengths must lie in 1..16")
    return xs


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="specdec", description="Exact speculative decoding for GPT-SoVITS.")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="command", required=True)
    for add in (_add_bench, _add_convert, _add_info):
        add(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except SpecdecError as e:
        if args.debug:
            raise
        print(f"specdec: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("specdec: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
