"""`specdec` command line: synth, bench, distill, convert, info, voice create.

Every user error is one line on stderr and a non-zero exit; `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from specdec.errors import SpecdecError

EXIT_USER_ERROR = 2


BUNDLE_DRAFTS = {"bundle": "demo draft", "bundle-int8": "demo draft int8", "bundle-gpt": "demo gpt draft",
                 "bundle-gpt-int8": "demo gpt draft int8"}  # `specdec bench --draft` names → row names

MODES = {  # presets; explicit options override them, and a bundle's generation.json the fast / eco drafting
    "quality": dict(draft="none", stream=False),  # the full decoder, offline, no speculation needed
    # speculation + streaming (+ the bundle's fast decoder). A model set without a bundled draft drafts with an int8
    # copy of its GPT: exact, no file to train; k = 6 was its fastest on the first trained v2 target (1.66x AR against
    # 1.37x at k = 4 and 1.51x at k = 8, bench/results/gpt_v2_lost/bench_gpt_v2.md); on the rebuilt one every k from
    # 2 to 8 gave 1.33-1.46x (k = 6: 1.35x, bench/results/gpt_v2_1613/bench_gpt_v2.md)
    "fast": dict(draft="bundle", stream=True, unbundled="int8", unbundled_k=6),
    # fast + the GPT's block matmuls in int8: LOSSY, tokens follow an approximation of the model (labelled as such)
    "eco": dict(draft="bundle", stream=True, quantize=True, unbundled="none"),
}


def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="text → speech; prints acceptance statistics",
                       description="Synthesise TEXT. With no model options the bundled demo voice speaks. "
                                   "--mode presets: quality = no speculation, offline decode; fast = the "
                                   "bundle's fastest exact draft (a model set's own: an int8 copy of its GPT) + "
                                   "streaming decode; eco = streaming with an int8 GPT (lossy: the output is labelled "
                                   "so) and the bundle's draft. "
                                   "Explicit options override a preset.")
    p.add_argument("text")
    p.add_argument("-o", "--out", default="out.wav", help="output wav (written only when synthesis succeeds)")
    p.add_argument("--gpt", help="GPT file (upstream .ckpt or specdec .safetensors)")
    p.add_argument("--sovits", help="SoVITS file (upstream .pth or specdec .safetensors)")
    p.add_argument("--voice", help="voice folder (specdec voice create), or a built-in speaker's name")
    p.add_argument("--draft", help="bundle (the bundle's trained draft), bundle-int8 (its int8 copy), GPT/EAGLE file, "
                                   "layerskip:N, int8[:N] (an int8 copy of the GPT), int8:FILE (of a draft file), "
                                   "ngram or none (default: the bundle's choice for the mode)")
    p.add_argument("--k", type=int, default=None,
                   help="drafts per round (default: the bundle's for the mode; 6 for an int8 copy, else 4)")
    p.add_argument("--adaptive", action="store_true", help="pick k per round from observed acceptance")
    p.add_argument("--draft-temperature", type=float, default=None,
                   help="the draft samples at this multiple of --temperature (exact for any value; default: the "
                        "draft's own, stored by specdec distill, else 1)")
    # sampling defaults: the demo bundle's generation.json (its model card says why), else upstream's 15, 1, 1, 1.35
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="decode in chunks as tokens are accepted (reports time to first audio)")
    p.add_argument("--text-split", default="cut1", choices=["cut0", "cut1", "cut2", "cut3", "cut4", "cut5"])
    p.add_argument("--language", default=None, help="en, zh or auto (default: the voice's)")
    p.add_argument("--mode", choices=sorted(MODES), default="fast")
    p.add_argument("--json", action="store_true", help="print the statistics as one JSON object on stdout")
    p.set_defaults(func=cmd_synth)


def _resolve_draft(spec, bundle_draft):
    if spec in ("bundle", "bundle-int8"):
        if bundle_draft is None:
            raise SpecdecError(f"--draft {spec}: this model set has no bundled draft (give a file, int8, "
                               "layerskip:N or ngram)")
        from specdec.models.int8 import quantize_draft
        return bundle_draft if spec == "bundle" else quantize_draft(bundle_draft)
    if spec == "none":
        return None
    return spec  # a path, layerskip:N, int8[:N|:FILE] or ngram (the engine resolves and validates it)


def cmd_synth(args) -> None:
    from specdec.demo import MAX_K
    from specdec.pipeline import TTS, synthesize, write_wav
    from specdec.sampling import SAMPLING_OPTIONS, SamplingParams
    preset = MODES[args.mode]
    given = {name: getattr(args, name) for name in SAMPLING_OPTIONS if getattr(args, name) is not None}
    SamplingParams(**given)  # impossible values fail before any model loads
    if not args.text.strip():
        raise SpecdecError("the text is empty")
    if args.k is not None and not 1 <= args.k <= MAX_K:
        raise SpecdecError(f"--k must lie in 1..{MAX_K} (got {args.k})")
    if args.draft_temperature is not None and not 0 < args.draft_temperature < float("inf"):
        raise SpecdecError(f"--draft-temperature must be positive (got {args.draft_temperature})")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise SpecdecError(f"{args.out}: the folder {out_dir} does not exist")
    gpt, decoder, frontend, voice, bundle_draft, generation = _load_models(args)
    sampling = {**{name: v for name, v in generation.items() if name in SAMPLING_OPTIONS}, **given}
    params = SamplingParams(seed=args.seed, **sampling)
    if preset.get("quantize"):
        from specdec.models.int8 import quantize_gpt
        gpt = quantize_gpt(gpt)
    drafting = generation.get(args.mode, {})  # the bundle's measured draft and k for this mode
    spec = args.draft if args.draft is not None else drafting.get("draft", preset["draft"])
    k = drafting.get("k", 4)
    if args.draft is None and spec == "bundle" and bundle_draft is None:
        spec, k = preset["unbundled"], preset.get("unbundled_k", k)
    draft = _resolve_draft(spec, bundle_draft)
    stream = preset["stream"] if args.stream is None else args.stream
    tts = TTS(gpt, decoder, frontend, draft=draft, k=args.k or k, adaptive=args.adaptive,
              draft_temperature=args.draft_temperature)
    frontend.read(args.text, args.language or voice.language)  # a text it cannot read fails now, not after warm-up
    tts.warm_up(voice)  # first-audio time then measures synthesis, not dictionary loading or weight packing
    audio, stats = synthesize(args.text, tts, voice, streaming=stream, language=args.language,
                              text_split=args.text_split, params=params)
    write_wav(args.out, audio, decoder.sample_rate)
    report = {**stats.to_dict(), "out": args.out, "mode": args.mode,
              "draft": spec if spec == "bundle-int8" else _draft_name(draft),
              "k": tts.k if draft is not None else 0,
              "draft_temperature": tts.engine().draft_temperature if draft is not None else None,
              "streaming": stream, "voice": voice.name,
              "sampling": {name: getattr(params, name) for name in (*SAMPLING_OPTIONS, "seed")}}
    if args.json:
        print(json.dumps(report))
    else:
        _print_synth_table(report)


def _draft_name(draft) -> str:
    if draft is None:
        return "none"
    return draft if isinstance(draft, str) else getattr(draft, "name", type(draft).__name__)


def _load_models(args):
    """(gpt, decoder, frontend, voice, bundle draft, the bundle's generation defaults) from explicit files, or the
    bundled demo voice."""
    from specdec.models.text import Frontend
    from specdec.voices import Voice
    if args.gpt is None and args.sovits is None:
        from specdec import demo
        bundle = demo.load()
        voice = bundle.voice(args.voice)
        return bundle.gpt, bundle.decoder, bundle.frontend, voice, bundle.draft, bundle.generation
    if not (args.gpt and args.sovits and args.voice):
        raise SpecdecError("a model set needs --gpt, --sovits and --voice together (or none of them: demo voice)")
    from specdec.models.decoder import SoVITSDecoder
    from specdec.models.sovits import check_symbol_set
    gpt = _load_target(args.gpt)
    decoder = SoVITSDecoder.from_file(args.sovits, seed=0 if args.seed is None else args.seed)
    check_symbol_set(decoder.cfg, gpt.cfg.phoneme_vocab_size, f"{args.gpt} + {args.sovits}")
    voice = Voice.load(args.voice)
    return gpt, decoder, Frontend(voice.symbol_version), voice, None, {}


def _load_target(path: str):
    """The GPT in `path`, with a note when its weights cannot take the fast exact CPU kernels."""
    from specdec.models.checkpoint import load_gpt
    from specdec.models.linear import Linear, fp16_exact
    gpt = load_gpt(path)
    if not all(fp16_exact(m.weight) for m in gpt.modules() if isinstance(m, Linear)):
        print(f"note: {path} holds weights that are not fp16 values, so the fast exact CPU kernels step aside (torch "
              f"fp32 speed); `specdec convert {path} -o OUT.safetensors` rounds them to fp16, as upstream's released "
              "checkpoints are", file=sys.stderr)
    return gpt


def _print_synth_table(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"specdec synth → {r['out']}", show_header=False)
    acc = " ".join(f"{a:.2f}" for a in r["acceptance_per_position"]) or "–"
    rows = [("voice / mode", f"{r['voice']} / {r['mode']}" + (" (LOSSY: int8 GPT)" if r["lossy"] else "")),
            ("draft", _draft_cell(r)),
            ("sampling", "top_k {top_k} · top_p {top_p:g} · T {temperature:g} · repetition penalty "
                         "{repetition_penalty:g} · seed {seed}".format(**r["sampling"])),
            ("tokens generated", f"{r['tokens']}"),
            ("target forward passes", f"{r['target_passes']}"),
            ("acceptance rate (drafts)", f"{r['draft_acceptance_rate']:.1%}" if r["num_drafts"] else "–"),
            ("acceptance per position", acc),
            ("mean acceptance length", f"{r['mean_acceptance_length']:.2f}" if r["num_drafts"] else "–"),
            ("draft / verify time", f"{r['draft_s']:.2f} s / {r['verify_s']:.2f} s"),
            ("GPT tokens/s", f"{r['gpt_tokens_per_s']:.1f}"),
            ("time to first audio", f"{r['first_chunk_s']:.2f} s" + ("" if r["streaming"] else " (offline)")),
            ("audio", f"{r['audio_s']:.2f} s"),
            ("real-time factor", f"{r['rtf']:.3f}")]
    for k, v in rows:
        t.add_row(k, v)
    Console().print(t)


def _draft_cell(r: dict) -> str:
    """`int8 (k=12)`, `demo draft (k=4, T×0.5)`, or the bare name when nothing drafted."""
    if not r["k"]:
        return r["draft"]
    cooled = r["draft_temperature"] not in (None, 1.0)
    return f"{r['draft']} (k={r['k']}" + (f", T×{r['draft_temperature']:g}" if cooled else "") + ")"


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="GPT tokens/s: AR vs every draft kind and a k sweep (vs upstream if installed); "
                                     "end-to-end first-audio time and real-time factor on the demo voice")
    p.add_argument("--shape", choices=["v2", "v1", "s1"], default=None,
                   help="time a real upstream shape with random weights (cost only: acceptance is meaningless)")
    p.add_argument("--gpt", help="target GPT file (upstream .ckpt or specdec .safetensors); one trained on the demo's "
                                 "units speaks the demo's voices and sentences, any other random requests")
    p.add_argument("--demo", action="store_true",
                   help="the bundled demo voice (the default): real sentences, its draft, plus end-to-end figures")
    p.add_argument("--draft", action="append", default=None,
                   help="draft to sweep: a GPT/EAGLE file, layerskip:N, int8[:N|:FILE], ngram, bundle (the demo's "
                        "EAGLE draft), bundle-gpt (its small GPT draft) or either + '-int8' (repeatable)")
    p.add_argument("--k", default="2,4,6,8", help="comma-separated draft lengths to sweep")
    p.add_argument("--draft-temperature", default=None,
                   help="comma-separated draft temperatures (multiples of the request's) to sweep for every model "
                        "draft, rows named DRAFT T×t (default: each draft at its own, stored by specdec distill)")
    p.add_argument("--tokens", type=int, default=150, help="max new tokens per request")
    p.add_argument("--requests", type=int, default=2,
                   help="requests in the fixed set (the demo's: up to 8 sentences); each repeat samples new seeds")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--no-upstream", action="store_true", help="skip upstream infer_panel_naive")
    p.add_argument("--eco", action="store_true",
                   help="also time the int8 target (eco mode, lossy) alone and with every draft but int8 copies")
    p.add_argument("--adaptive", action="store_true",
                   help="also time every draft with k chosen per round from observed acceptance, up to the largest --k")
    p.add_argument("-o", "--out", default="bench/results", help="folder for JSON, Markdown and PNG plots")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> None:
    import torch
    from rich.console import Console
    from rich.progress import Progress

    from specdec import bench
    from specdec.engine import Request
    from specdec.models.int8 import quantize_draft
    from specdec.sampling import SamplingParams
    ks = _int_list(args.k, "--k")
    if min(args.requests, args.repeats, args.tokens) < 1 or args.warmup < 0:
        raise SpecdecError("--requests, --repeats and --tokens must be ≥ 1 and --warmup ≥ 0")
    if (args.shape is not None) + (args.gpt is not None) + args.demo > 1:
        raise SpecdecError("give at most one of --shape (random weights), --gpt FILE or --demo (the default)")
    params = dict(max_new_tokens=args.tokens)
    bundle = None
    if args.shape:
        target = bench.random_target(args.shape)
    else:
        from specdec import demo
        bundle = demo.load()
        target = _load_target(args.gpt) if args.gpt else bundle.gpt
        c, d = target.cfg, bundle.gpt.cfg
        if (c.vocab_size, c.phoneme_vocab_size) != (d.vocab_size, d.phoneme_vocab_size):
            bundle = None  # not the demo's units: it cannot speak the demo's voices
    own_drafts = args.gpt is None  # the bundle's drafts are the bundle target's
    if bundle is None:
        default_drafts = ["layerskip:4", "layerskip:8", "int8", "ngram"] if args.shape else ["ngram"]
        requests = [Request(*bench.fixed_request(phoneme_vocab_size=target.cfg.phoneme_vocab_size, seed=i),
                            params=SamplingParams(seed=i, **params)) for i in range(args.requests)]
        tag = args.shape or os.path.splitext(os.path.basename(args.gpt))[0]
    else:  # the demo's voice and sentences: its own target, or another trained on the same units (--gpt)
        voice = bundle.voice(None)
        default_drafts = [*(["bundle", "bundle-int8"] if own_drafts else []),
                          *(["bundle-gpt", "bundle-gpt-int8"] if own_drafts and bundle.gpt_draft is not None else []),
                          f"layerskip:{max(1, target.cfg.n_layer // 2)}", "int8", "ngram"]
        if args.requests > len(bench.BENCH_TEXTS):
            raise SpecdecError(f"--requests {args.requests}: the demo's sentences are {len(bench.BENCH_TEXTS)}")
        requests = []
        for i, text in enumerate(bench.BENCH_TEXTS[:args.requests]):
            phones, _ = bundle.frontend.phones(text, voice.language)
            requests.append(Request(torch.cat([voice.phones, phones]), voice.tokens,
                                    params=SamplingParams(seed=i, **params)))
        tag = "demo" if own_drafts else os.path.splitext(os.path.basename(args.gpt))[0]
    drafts = {}
    for d in args.draft or default_drafts:
        if d in BUNDLE_DRAFTS:
            draft = None if bundle is None or not own_drafts else (
                bundle.gpt_draft if d.startswith("bundle-gpt") else bundle.draft)
            if draft is None:
                raise SpecdecError(f"--draft {d} needs the demo bundle's own target (--demo) and its draft")
            drafts[BUNDLE_DRAFTS[d]] = quantize_draft(draft) if d.endswith("-int8") else draft
        else:
            # layerskip:N, int8[:N|:FILE], ngram[:N] or a file: the engine resolves and validates it; a file's row
            # is named by its file name
            path = d.removeprefix("int8:")
            drafts[d.replace(path, os.path.basename(path))] = d
    draft_temperatures = {}
    if args.draft_temperature is not None:
        drafts, draft_temperatures = _at_temperatures(drafts, _float_list(args.draft_temperature,
                                                                          "--draft-temperature"))
    upstream = not args.no_upstream and _upstream_importable()
    n_eco = (1 + len(bench.eco_draft_names(drafts)) * len(ks)) if args.eco else 0
    n_configs = 1 + len(drafts) * (len(ks) + args.adaptive) + upstream + n_eco
    console = Console(stderr=True)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("bench", total=n_configs * (args.repeats + args.warmup))

        def step(msg: str) -> None:
            progress.update(task, advance=1, description=msg)
        res = bench.spec_sweep(target, drafts, ks, requests, args.repeats, args.warmup, upstream, args.eco, step,
                               draft_temperatures, args.adaptive)
        if bundle is not None:  # end to end: AR against the fastest exact configuration, both streaming
            from specdec.pipeline import TTS
            best = max((r for r in res["rows"] if " k=" in r["name"] and not r.get("lossy")),
                       key=lambda r: r["speedup_vs_AR"])
            dname, k = best["name"].rsplit(" k=", 1)
            configs = {"AR": TTS(target, bundle.decoder, bundle.frontend),
                       best["name"]: TTS(target, bundle.decoder, bundle.frontend, draft=drafts[dname], k=int(k),
                                         draft_temperature=draft_temperatures.get(dname))}
            task = progress.add_task("end to end", total=len(configs) * (args.repeats + args.warmup))
            res["end_to_end"] = bench.end_to_end(configs, voice, bench.BENCH_TEXTS[:args.requests], args.repeats,
                                                 args.warmup, lambda m: progress.update(task, advance=1, description=m))
    os.makedirs(args.out, exist_ok=True)
    res["source"] = {"shape": args.shape, "gpt": args.gpt or ("demo" if bundle else None), "drafts": list(drafts),
                     "tokens": args.tokens}
    bench.write_json(os.path.join(args.out, f"bench_{tag}.json"), res)
    md = bench.markdown_table(res) + ("\n" + bench.markdown_e2e(res["end_to_end"]) if "end_to_end" in res else "")
    with open(os.path.join(args.out, f"bench_{tag}.md"), "w") as f:
        f.write(md)
    outdir = os.path.join(args.out, f"bench_{tag}")
    os.makedirs(outdir, exist_ok=True)
    pngs = bench.plots(res, outdir)
    Console().print(md)
    console.print(f"wrote {os.path.join(args.out, f'bench_{tag}.json')}, .md and {', '.join(pngs)}")


def _upstream_importable() -> bool:
    try:
        from specdec.upstream import import_upstream
        import_upstream("AR.models.t2s_model")
        return True
    except (SpecdecError, ImportError):
        return False


def _add_distill(sub) -> None:
    from specdec.gpt_train import PRECISIONS
    p = sub.add_parser("distill", help="train a draft on the target's own warped distributions (resumable)",
                       description="The target generates a sequence for every line of --texts (upstream default "
                                   "sampling, prompted by --voice if given); a draft then learns the target's warped "
                                   "next-token distribution on them (minimising its rejection rate, plus a little KL). "
                                   "The last 10%% of lines are held out; "
                                   "acceptance on them is reported before and after. Re-running resumes.")
    p.add_argument("--target", required=True, help="target GPT file (upstream .ckpt or specdec .safetensors)")
    p.add_argument("--texts", required=True, help="UTF-8 file, one sentence per line (≥ 10 lines)")
    p.add_argument("--kind", choices=["gpt", "eagle"], default="eagle",
                   help="gpt: a small GPT of its own; eagle: a head fed the target's hidden states")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--width", type=int, default=None, help="gpt drafts: width (default: the target's)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--passes", type=int, default=4,
                   help="eagle drafts: draft steps unrolled in training, each fed the previous step's features")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="training steps' matmuls; bf16 (a CPU autocast) is ~3x faster where the CPU has AMX or "
                        "AVX512-BF16; acceptance is measured in fp32 either way")
    p.add_argument("--voice", help="voice folder (or a demo speaker's name) whose prompt the target continues")
    p.add_argument("--language", default="en")
    p.add_argument("--max-tokens", type=int, default=500, help="cap on each generated sequence")
    p.add_argument("--work-dir", default=None, help="checkpoints and generated data (default: OUT.work/)")
    p.add_argument("-o", "--out", required=True)
    p.set_defaults(func=cmd_distill)


def cmd_distill(args) -> None:
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from specdec import distill
    from specdec.engine import Engine, Request
    from specdec.models import weights
    from specdec.models.checkpoint import load_gpt
    from specdec.models.text import Frontend
    from specdec.sampling import SamplingParams
    if args.layers < 1 or (args.width is not None and args.width < 8) or args.steps < 1 or args.passes < 1:
        raise SpecdecError("--layers, --steps and --passes must be ≥ 1 and --width ≥ 8")
    if not os.path.isfile(args.texts):
        raise SpecdecError(f"{args.texts}: no such file")
    with open(args.texts, encoding="utf-8") as f:
        texts = [line.strip() for line in f if line.strip()]
    if len(texts) < 10:
        raise SpecdecError(f"{args.texts}: {len(texts)} sentences; distillation needs at least 10")
    target = load_gpt(args.target)
    frontend = Frontend("v1" if target.cfg.phoneme_vocab_size == 512 else "v2")
    voice = _voice(args.voice) if args.voice else None
    work = args.work_dir or args.out + ".work"
    os.makedirs(work, exist_ok=True)
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    data_path = os.path.join(work, "examples.pt")
    if os.path.exists(data_path):  # resume: the target's sequences are generated once
        examples = [distill.Example(**e) for e in weights.load_checkpoint(data_path)]
    else:
        examples = []
        engine = Engine(target)
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("target generates", total=len(texts))
            for i in range(0, len(texts), 8):
                reqs = []
                for j, text in enumerate(texts[i:i + 8]):
                    phones, _ = frontend.phones(text, args.language)
                    if voice is not None:
                        phones = torch.cat([voice.phones, phones])
                    reqs.append(Request(phones, voice.tokens if voice is not None else None,
                                        params=SamplingParams(seed=i + j, max_new_tokens=args.max_tokens)))
                for r, o in zip(reqs, engine.generate(reqs)):
                    prompt = r.prompt if r.prompt is not None else torch.zeros(0, dtype=torch.long)
                    examples.append(distill.Example(r.phones, torch.cat([prompt, o.tokens])))
                progress.advance(task, len(reqs))
        weights.save_checkpoint([{"phones": e.phones, "tokens": e.tokens} for e in examples], data_path)
    n_held = max(1, len(examples) // 10)
    cfg = distill.DistillConfig(kind=args.kind, n_layer=args.layers, d_model=args.width, steps=args.steps,
                                precision=args.precision, passes=args.passes)
    with Progress(*columns, TextColumn("loss {task.fields[loss]:.3f}"), console=console, transient=True) as progress:
        task = progress.add_task(f"distilling {args.kind}", total=args.steps, loss=float("nan"))
        report = distill.distill(target, examples[:-n_held], examples[-n_held:], args.out, work, cfg,
                                 progress=lambda step, total, loss: progress.update(task, completed=step, loss=loss))
    b, a = report["alpha_before"], report["alpha_after"]
    Console().print(f"wrote {args.out} ({args.kind}, {args.layers} layer(s)): held-out acceptance α at draft steps "
                    f"1–{len(a)} {' / '.join(f'{x:.3f}' for x in b)} → {' / '.join(f'{x:.3f}' for x in a)} "
                    f"({report['steps']} steps, {len(examples) - n_held} train / {n_held} held-out sequences); "
                    f"{distill.temperature_summary(report)}")


def _voice(spec: str):
    """A voice folder, or the name of one of the demo bundle's speakers."""
    from specdec.voices import Voice
    if os.path.isdir(spec):
        return Voice.load(spec)
    from specdec import demo
    return demo.load().voice(spec)


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="upstream GPT .ckpt or SoVITS .pth → specdec .safetensors (weights + config)")
    p.add_argument("src")
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--dtype", choices=["float32", "float16"], default="float16",
                   help="storage dtype (upstream GPT checkpoints are fp16: converting to fp16 loses nothing)")
    p.set_defaults(func=cmd_convert)


def _load_model_file(path: str):
    """("gpt" | "sovits", model) for any checkpoint the project reads, told apart by content, not by name."""
    from specdec.models import weights
    from specdec.models.checkpoint import FORMAT_TAG as GPT_TAG
    from specdec.models.checkpoint import load_gpt
    from specdec.models.sovits_checkpoint import FORMAT_TAG as SOVITS_TAG
    from specdec.models.sovits_checkpoint import load_sovits
    weights.check_file(path, "checkpoint")
    if weights.is_safetensors(path):
        tag = weights.format_of(path)
        if tag == SOVITS_TAG:
            return "sovits", load_sovits(path)
        if tag != GPT_TAG:
            raise SpecdecError(f"{path}: a safetensors file but not a specdec GPT or SoVITS model (format {tag!r})")
        return "gpt", load_gpt(path)
    return ("sovits", load_sovits(path)) if _looks_like_sovits_pickle(path) else ("gpt", load_gpt(path))


def _looks_like_sovits_pickle(path: str) -> bool:
    """Sniffed without unpickling: SoVITS files carry a 2-byte version tag instead of the zip magic, or their pickle
    names `enc_p.` weights. Anything unreadable goes to the GPT loader, whose errors say what is wrong."""
    import zipfile
    with open(path, "rb") as f:
        if f.read(2) != b"PK":
            return True
    try:
        with zipfile.ZipFile(path) as z:
            pkl = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
            return pkl is not None and b"enc_p." in z.read(pkl)
    except (zipfile.BadZipFile, OSError):
        return False


def cmd_convert(args) -> None:
    import torch

    from specdec.models.checkpoint import save_gpt
    from specdec.models.sovits_checkpoint import save_sovits
    kind, model = _load_model_file(args.src)
    dtype = getattr(torch, args.dtype)
    lossy = any(p.is_floating_point() and not torch.equal(p.to(dtype).float(), p.float())
                for p in model.state_dict().values())
    if lossy:
        print(f"note: {args.src} holds weights that {args.dtype} rounds; use --dtype float32 to keep them exactly",
              file=sys.stderr)
    (save_gpt if kind == "gpt" else save_sovits)(model, args.out, dtype=dtype)
    print(f"wrote {args.out} ({kind})")


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="what a checkpoint holds: kind, version, shapes, symbol set")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)


def cmd_info(args) -> None:
    kind, model = _load_model_file(args.file)
    c = model.cfg
    n_params = sum(p.numel() for p in model.parameters())
    from specdec.models.linear import fp16_exact
    exact = all(fp16_exact(p) for p in model.parameters())
    if kind == "gpt":
        info = {"file": args.file, "kind": "GPT (text-to-semantic)", **c.to_dict(), "parameters": n_params,
                "symbol_set": {512: "v1 (322 symbols)", 732: "v2 (732 symbols)"}.get(c.phoneme_vocab_size, "custom"),
                "fp16_exact": exact}
    else:
        info = {"file": args.file, "kind": "SoVITS (semantic tokens → waveform)", "version": c.version,
                "symbol_set": f"{c.symbol_version} ({c.n_symbols} symbols)", "sample_rate": c.sampling_rate,
                "hidden_channels": c.hidden_channels, "upsample_rates": list(c.upsample_rates),
                "parameters": n_params, "fp16_exact": exact}
    if args.json:
        print(json.dumps(info))
        return
    from rich.console import Console
    from rich.table import Table
    t = Table(title=os.path.basename(args.file), show_header=False)
    for k, v in info.items():
        t.add_row(k, f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v))
    Console().print(t)


def _float_list(s: str, flag: str) -> list[float]:
    try:
        xs = [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise SpecdecError(f"{flag}: expected comma-separated numbers, got {s!r}") from None
    if not xs or not all(0 < x < float("inf") for x in xs):
        raise SpecdecError(f"{flag}: expected positive numbers, got {s!r}")
    return xs


def _at_temperatures(drafts: dict, temperatures: list[float]) -> tuple[dict, dict[str, float]]:
    """Every model draft once per draft temperature (rows `NAME T×t`); ngram's q is one-hot, which no temperature
    changes, so it runs once."""
    out, temps = {}, {}
    for name, draft in drafts.items():
        if isinstance(draft, str) and draft.startswith("ngram"):
            out[name] = draft
            continue
        for t in temperatures:
            out[f"{name} T×{t:g}"] = draft
            temps[f"{name} T×{t:g}"] = t
    return out, temps


def _int_list(s: str, flag: str) -> list[int]:
    try:
        xs = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise SpecdecError(f"{flag}: expected comma-separated integers, got {s!r}") from None
    if not xs or any(x < 1 or x > 16 for x in xs):
        raise SpecdecError(f"{flag}: draft lengths must lie in 1..16")
    return xs


def _add_voice(sub) -> None:
    p = sub.add_parser("voice", help="voices: create one from a reference clip")
    vs = p.add_subparsers(dest="voice_command", required=True)
    c = vs.add_parser("create", help="reference clip (3-10 s) + its transcript → a voice folder")
    c.add_argument("ref", help="reference audio (wav/flac/ogg), 3 to 10 seconds")
    c.add_argument("--text", required=True, help="what the reference says")
    c.add_argument("--language", default="en")
    c.add_argument("--sovits", help="the SoVITS model the voice is for (its codebook makes the tokens); without it "
                   "the voice is for the bundled demo voice (English; its tokenizer makes the tokens)")
    c.add_argument("--hubert", help="local chinese-hubert-base folder (config.json + weights), with --sovits")
    c.add_argument("--sv", help="ERes2NetV2 checkpoint, for v2Pro/v2ProPlus models")
    c.add_argument("--name")
    c.add_argument("-o", "--out", required=True, help="output voice folder")
    c.set_defaults(func=cmd_voice_create)


def cmd_voice_create(args) -> None:
    from rich.console import Console
    console = Console(stderr=True)
    if args.sovits is None:
        from specdec import demo
        if args.hubert or args.sv or args.language != "en":
            raise SpecdecError("--hubert, --sv and --language other than en need --sovits (the demo voice is English)")
        with console.status("reading the reference's units"):
            voice = demo.load().create_voice(args.ref, args.text, args.name)
    else:
        from specdec.models.sovits_checkpoint import load_sovits
        from specdec.models.text import Frontend
        from specdec.voices import create_sovits_voice
        if args.hubert is None:
            raise SpecdecError("--sovits needs --hubert (a local chinese-hubert-base folder)")
        with console.status("loading SoVITS"):
            sovits = load_sovits(args.sovits)
        version = "v1" if sovits.cfg.version == "v1" else "v2"
        with console.status("extracting prompt tokens, spectrogram and phones"):
            voice = create_sovits_voice(args.ref, args.text, args.language, Frontend(version), sovits, args.hubert,
                                        args.sv, args.name)
    voice.save(args.out)
    console.print(f"wrote voice {voice.name!r} to {args.out}: {voice.tokens.numel()} prompt tokens, "
                  f"{voice.phones.numel()} phones")


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line too (argparse prints the usage block first)."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="specdec", description="Exact speculative decoding for GPT-SoVITS.")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="command", required=True)
    for add in (_add_synth, _add_bench, _add_distill, _add_convert, _add_info, _add_voice):
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
