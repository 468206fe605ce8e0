"""SoVITS checkpoints: upstream `.pth` (read) and the project's safetensors format (read and write).

Upstream `.pth` = torch.save({"weight": state_dict in fp16 without enc_q, "config": hps, "info": "…epoch_…iteration"}).
`hps` is upstream's `utils.HParams` object (a dict with attribute access) in files its trainer wrote, or a plain dict.
v2Pro/v2ProPlus (and v3/v4 LoRA) files have the zip magic "PK" overwritten by a 2-byte version tag
(b"05" v2Pro, b"06" v2ProPlus, b"03"/b"04" v3/v4 LoRA; b"00"/b"01"/b"02" are known but never written). The file is
read with `torch.load(weights_only=True)` from an in-memory copy with "PK" put back; `utils.HParams` is let through as
a plain attribute bag and nothing else is unpickled.

Version: from the weights, cross-checked with the tag. 322 text symbols → v1, 732 → v2; `sv_emb` present → Pro;
a 768-channel HiFi-GAN (upsample_initial_channel) → ProPlus. v3/v4 (tags 02/03/04, CFM/DiT keys, no text embedding,
or a plain file over 700 MiB, upstream's own size rule) are refused.

specdec format = one `.safetensors` with weight norm already folded and metadata
{"format": "specdec-sovits", "config": SoVITSConfig JSON}.
"""
from __future__ import annotations

import os
import re

import torch
from specdec.models import weights as weights_io
from specdec.models.sovits import N_SYMBOLS, SoVITS, SoVITSConfig

from specdec.errors import SpecdecError

FORMAT_TAG = "specdec-sovits"
VERSION_TAGS = {b"00": "v1", b"01": "v2", b"05": "v2Pro", b"06": "v2ProPlus"}
V3V4_TAGS = {b"02": "v3", b"03": "v3 LoRA", b"04": "v4 LoRA"}
V3V4_MIN_BYTES = 700 * 1024 * 1024  # upstream: an untagged file this large is a v3/v4 model
V3V4_KEYS = ("cfm.", "bridge.", "wns1.")  # SynthesizerTrnV3: CFM/DiT, bridge conv, 512-d WN encoder
UNSUPPORTED = "v3/v4 are not supported yet (supported: v1, v2, v2Pro, v2ProPlus)"

# upstream key → specdec key, for the few places where upstream nests modules the decode path does not need
_RENAMES = [
    (re.compile(r"^ref_enc\.spectral\.0\.fc\."), "ref_enc.spectral_in."),
    (re.compile(r"^ref_enc\.spectral\.3\.fc\."), "ref_enc.spectral_out."),
    (re.compile(r"^ref_enc\.temporal\.(\d+)\.conv1\.conv\."), r"ref_enc.temporal.\1."),
    (re.compile(r"^ref_enc\.fc\.fc\."), "ref_enc.fc."),
    (re.compile(r"^quantizer\.vq\.layers\.0\._codebook\.embed$"), "codebook"),
]
_UNUSED = re.compile(r"^(enc_q\.|quantizer\.)")  # posterior encoder (training only), codebook EMA statistics


class _HParams:
    """Stand-in for upstream `utils.HParams` so the weights-only unpickler can rebuild hps as an attribute bag."""


_HParams.__module__, _HParams.__qualname__, _HParams.__name__ = "utils", "HParams", "HParams"


def _plain(obj):
    """hps (HParams stand-ins, dicts, lists) → plain dicts and lists."""
    if isinstance(obj, _HParams):
        obj = vars(obj)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# ---- reading upstream .pth -----------------------------------------------------------------------------------
def read_upstream_pth(path: str) -> tuple[dict, dict, bytes]:
    """→ (weights, hps as plain dicts, the file's first 2 bytes). Refuses v3/v4 files before unpickling them."""
    if os.path.isfile(path) and os.path.getsize(path) >= 2:
        with open(path, "rb") as f:
            tag = f.read(2)
        if tag in V3V4_TAGS:
            raise SpecdecError(f"{path}: SoVITS {V3V4_TAGS[tag]} checkpoint (version tag {tag.decode()}); "
                               + UNSUPPORTED)
        if tag != b"PK" and tag not in VERSION_TAGS:
            raise SpecdecError(f"{path}: not a SoVITS checkpoint (starts with {tag!r}, expected a zip or a "
                               f"version tag {', '.join(t.decode() for t in VERSION_TAGS)})")
        if tag == b"PK" and os.path.getsize(path) >= V3V4_MIN_BYTES:
            raise SpecdecError(f"{path}: {os.path.getsize(path) >> 20} MiB untagged SoVITS file, which upstream "
                               f"treats as a v3/v4 model; {UNSUPPORTED}")
    else:
        tag = b""
    with torch.serialization.safe_globals([_HParams]):
        ckpt = weights_io.read_torch_pickle(path)
    weights, hps = ckpt.get("weight"), _plain(ckpt.get("config"))
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise SpecdecError(f"{path}: not a GPT-SoVITS SoVITS checkpoint (no 'weight' dict of tensors)")
    if any(k.startswith("model.") for k in weights):
        raise SpecdecError(f"{path}: this is a GPT checkpoint, not a SoVITS one")
    if not isinstance(hps, dict) or not isinstance(hps.get("model"), dict):
        raise SpecdecError(f"{path}: SoVITS checkpoint lacks its 'config' (hps with a 'model' section)")
    return weights, hps, tag


def detect_version(path: str, weights: dict, tag: bytes = b"PK") -> str:
    """v1 | v2 | v2Pro | v2ProPlus from the weights; the header tag must agree; v3/v4 are refused."""
    if any(k.startswith(V3V4_KEYS) for k in weights) or "enc_p.text_embedding.weight" not in weights:
        raise SpecdecError(f"{path}: SoVITS v3/v4 checkpoint (CFM decoder, no text embedding); "
                           + UNSUPPORTED)
    if "dec.conv_pre.weight" not in weights:
        raise SpecdecError(f"{path}: not a SoVITS v1/v2 checkpoint (no HiFi-GAN decoder weights)")
    n_sym = weights["enc_p.text_embedding.weight"].shape[0]
    symbols = {v: k for k, v in N_SYMBOLS.items()}.get(n_sym)
    if symbols is None:
        raise SpecdecError(f"{path}: text embedding has {n_sym} rows; expected 322 (v1) or 732 (v2 symbols)")
    if "sv_emb.weight" in weights:
        if symbols == "v1":
            raise SpecdecError(f"{path}: inconsistent checkpoint: speaker-embedding weights with v1 symbols")
        version = "v2ProPlus" if weights["dec.conv_pre.weight"].shape[0] == 768 else "v2Pro"
    else:
        version = symbols
    tagged = VERSION_TAGS.get(tag)
    if tagged is not None and tagged != version and not {tagged, version} <= {"v1", "v2"}:
        raise SpecdecError(f"{path}: header says {tagged} (tag {tag.decode()}) but the weights are {version}")
    return version


def config_from_hps(path: str, hps: dict, version: str) -> SoVITSConfig:
    m, d = hps.get("model", {}), hps.get("data", {})
    try:
        if str(m.get("resblock", "1")) != "1":
            raise SpecdecError(f"{path}: resblock type {m['resblock']!r} is not supported "
                               "(all released models use '1')")
        kw = {k: m[k] for k in ("inter_channels", "hidden_channels", "filter_channels", "n_heads", "n_layers",
                                "kernel_size", "resblock_kernel_sizes", "resblock_dilation_sizes", "upsample_rates",
                                "upsample_initial_channel", "upsample_kernel_sizes", "gin_channels")}
        kw.update({k: d[k] for k in ("sampling_rate", "filter_length", "hop_length", "win_length")})
    except KeyError as e:
        raise SpecdecError(f"{path}: SoVITS config (hps) lacks {e.args[0]!r}") from None
    return SoVITSConfig.from_dict({"version": version, **kw})


def upstream_to_specdec(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename, fold weight norm (w = g·v/‖v‖, norm over all dims but 0) in fp32, drop enc_q and VQ statistics."""
    out = {}
    for k, v in weights.items():
        for pattern, new in _RENAMES:
            if pattern.search(k):
                k = pattern.sub(new, k)
                break
        else:
            if _UNUSED.match(k) or k.endswith("weight_g"):
                continue
        if k.endswith(".weight_v"):
            g = weights[k[:-len("weight_v")] + "weight_g"].float()
            v = v.float()
            k, v = k[:-len("_v")], v * (g / v.flatten(1).norm(dim=1).view(-1, *[1] * (v.ndim - 1)))
        out[k] = v
    return out


def load_upstream_sovits(path: str, dtype: torch.dtype = torch.float32) -> SoVITS:
    weights, hps, tag = read_upstream_pth(path)
    version = detect_version(path, weights, tag)
    cfg = config_from_hps(path, hps, version)
    return weights_io.load_state(path, SoVITS(cfg), upstream_to_specdec(weights), dtype, "SoVITS").requires_grad_(False)


def load_sovits(path: str, dtype: torch.dtype = torch.float32) -> SoVITS:
    """Read an upstream SoVITS `.pth` or a specdec `.safetensors` into a SoVITS model in eval mode."""
    weights_io.check_file(path, "SoVITS checkpoint")
    if weights_io.is_safetensors(path):
        state, config, _ = weights_io.read(path, FORMAT_TAG, "SoVITS")
        model = SoVITS(SoVITSConfig.from_dict(config))
        return weights_io.load_state(path, model, state, dtype, "SoVITS").requires_grad_(False)
    return load_upstream_sovits(path, dtype)


def save_sovits(model: SoVITS, path: str, dtype: torch.dtype | None = None) -> None:
    """Write a specdec `.safetensors` (folded weights + config) atomically. Default: the model's dtype; fp16 halves
    the file but rounds the folded weights once more than upstream's fp16 g/v do."""
    weights_io.write(path, model.state_dict(), FORMAT_TAG, model.cfg.to_dict(), dtype)
