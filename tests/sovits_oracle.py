"""Upstream SoVITS (`module.models.SynthesizerTrn` from PyPI gpt-sovits-cpufast==0.1.0) as an oracle.

Builds the upstream model from its own `configs/s2*.json` with random weights, saves it with upstream's own saver
(`process_ckpt.savee`: fp16, no enc_q, hps as `utils.HParams`, Pro files with the 2-byte version tag over "PK") and
loads it back the way upstream's TTS pipeline does (`load_sovits_new`, strict=False, `dec.remove_weight_norm()`).
Its audio helpers import PyAV (`av`), which the oracle paths used here never call: stubbed when missing.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import types
from dataclasses import dataclass

import torch

from upstream import require_upstream

CONFIGS = {"v1": "s2.json", "v2": "s2.json", "v2Pro": "s2v2Pro.json", "v2ProPlus": "s2v2ProPlus.json"}


def require_sovits_upstream() -> str:
    root = require_upstream()
    if "av" not in sys.modules and importlib.util.find_spec("av") is None:
        sys.modules["av"] = av = types.ModuleType("av")
        av.AudioFrame = object  # only used in annotations
    return root


def upstream_hps(version: str) -> dict:
    root = require_sovits_upstream()
    with open(os.path.join(root, "configs", CONFIGS[version])) as f:
        hps = json.load(f)
    hps["model"]["version"] = version
    return hps


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Random weights at sane scales for every parameter (upstream zero-inits the flow's post convs, which would
    make the flow an identity) and the codebook, rounded to fp16 values so the in-memory model equals what
    upstream's saver writes and needs no reload to serve as the oracle. Values are slices of one shared normal pool
    at random offsets: as random as the tests need, without drawing ~60 M fresh normals per model."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.randn(1 << 22, generator=g).half().float()

    def normal(shape) -> torch.Tensor:
        n = math.prod(shape)
        start = int(torch.randint(0, pool.numel(), (1,), generator=g))
        if start + n <= pool.numel():
            return pool[start:start + n].reshape(shape)
        return pool.repeat(n // pool.numel() + 2)[start:start + n].reshape(shape)

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("enc_q."):  # training only; savee drops it
                p.zero_()
            elif name.endswith("weight_g"):  # row norms of the folded weight
                p.copy_(1.0 + 0.2 * normal(p.shape).clamp(-1, 1))
            elif name.endswith("gamma"):
                p.copy_(1.0 + 0.1 * normal(p.shape))
            elif name.endswith("prelu.weight"):
                p.copy_(0.25 + 0.1 * normal(p.shape))
            elif name.endswith(("beta", "bias")) or p.ndim == 1:
                p.copy_(0.05 * normal(p.shape))
            elif "emb_rel" in name:
                p.copy_(normal(p.shape) * p.shape[-1] ** -0.5)
            elif "embedding" in name:
                p.copy_(normal(p.shape))
            else:  # conv / linear weights: fan-in scaling
                p.copy_(normal(p.shape) / p[0].numel() ** 0.5)
        for name, b in model.named_buffers():
            b.copy_(normal(b.shape) if name.endswith("_codebook.embed") else torch.ones_like(b))
        for t in list(model.parameters()) + list(model.buffers()):
            t.copy_(t.half().float())


def make_upstream_sovits(version: str, seed: int = 0):
    """→ (upstream SynthesizerTrn in eval mode with random weights, hps dict)."""
    require_sovits_upstream()
    from module.models import SynthesizerTrn
    hps = upstream_hps(version)
    d = hps["data"]
    with torch.device("meta"):  # skip upstream's own (slow) initialisation: every tensor is set below
        model = SynthesizerTrn(d["filter_length"] // 2 + 1, hps["train"]["segment_size"] // d["hop_length"],
                               n_speakers=d["n_speakers"], **hps["model"])
    model.to_empty(device="cpu")
    randomize_(model, seed)
    return model.eval(), hps


def save_upstream_pth(model, hps: dict, path: str) -> None:
    """Upstream's saver, verbatim: `process_ckpt.savee` (which also picks the Pro header tag)."""
    require_sovits_upstream()
    import utils
    from process_ckpt import savee
    directory, name = os.path.split(os.path.abspath(path))
    h = utils.HParams(**hps)
    h.save_weight_dir = directory
    version = hps["model"]["version"]
    with _cwd(directory):  # savee's plain path writes a temporary file into the working directory
        result = savee(model.state_dict(), name.removesuffix(".pth"), 1, 1, h,
                       model_version=version if "Pro" in version else None)
    assert result == "Success.", result


@dataclass
class OracleCase:
    version: str
    upstream: torch.nn.Module  # SynthesizerTrn ready for decode (weight norm removed from dec, as upstream does)
    path: str  # the same weights saved as upstream's .pth


_TMP = tempfile.mkdtemp(prefix="sovits-oracle-")
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)


@functools.cache
def oracle_case(version: str, seed: int = 0) -> OracleCase:
    """One random upstream model per version per test session, saved once as an upstream .pth."""
    model, hps = make_upstream_sovits(version, seed)
    path = os.path.join(_TMP, f"{version}-{seed}.pth")
    save_upstream_pth(model, hps, path)
    model.dec.remove_weight_norm()
    return OracleCase(version, model, path)


@functools.cache
def specdec_model(version: str):
    """Our SoVITS loaded (once per session) from the oracle case's upstream .pth."""
    from specdec.models.sovits_checkpoint import load_sovits
    return load_sovits(oracle_case(version).path)


def load_upstream_for_decode(path: str):
    """Upstream TTS.init_vits_weights, minus devices: → SynthesizerTrn ready for `decode`."""
    require_sovits_upstream()
    from module.models import SynthesizerTrn
    from process_ckpt import get_sovits_version_from_path_fast, load_sovits_new
    _, model_version, _ = get_sovits_version_from_path_fast(path)
    ckpt = load_sovits_new(path)
    hps = ckpt["config"]
    hps["model"]["semantic_frame_rate"] = "25hz"
    rows = ckpt["weight"]["enc_p.text_embedding.weight"].shape[0]
    hps["model"]["version"] = model_version if "Pro" in model_version else ("v1" if rows == 322 else "v2")
    d = hps["data"]
    model = SynthesizerTrn(d["filter_length"] // 2 + 1, hps["train"]["segment_size"] // d["hop_length"],
                           n_speakers=d["n_speakers"], **hps["model"])
    model.load_state_dict(ckpt["weight"], strict=False)
    model.dec.remove_weight_norm()
    return model.eval()


def upstream_spectrogram(wav32k: torch.Tensor) -> torch.Tensor:
    require_sovits_upstream()
    from module.mel_processing import spectrogram_torch
    return spectrogram_torch(wav32k[None], 2048, 32000, 640, 2048, center=False)[0]


def upstream_style(model, spec: torch.Tensor, sv_emb: torch.Tensor | None):
    sv = [sv_emb[None]] if model.is_v2pro else None
    with torch.no_grad():
        return model.build_decode_condition([spec[None]], sv)


def upstream_decode(model, tokens, phones, spec, sv_emb=None, speed=1.0) -> torch.Tensor:
    sv = [sv_emb[None]] if model.is_v2pro else None
    with torch.no_grad():
        out = model.decode(tokens[None, None], phones[None], [spec[None]], noise_scale=0.0, speed=speed, sv_emb=sv)
    return out[0, 0]


@contextlib.contextmanager
def _cwd(path: str):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)
