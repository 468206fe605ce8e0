"""Weight files: upstream torch pickles, read as safely as torch allows, and the project's own format
(safetensors with a `format` tag and a JSON `config` in the metadata).

One home for what every model kind (GPT, EAGLE draft, SoVITS, demo tokenizer and decoder) shares: checking the
path, telling safetensors from a torch pickle, atomic writes, and loading a state dict with one-line errors that
name the file and the first mismatch.
"""
from __future__ import annotations

import io
import json
import os
import zipfile

import torch
from torch import nn

from specdec.errors import SpecdecError


def check_file(path: str, kind: str) -> None:
    """One-line errors for the ways a path can fail to be a `kind` file before anything is parsed."""
    if not os.path.exists(path):
        raise SpecdecError(f"{path}: no such file")
    if os.path.isdir(path):
        raise SpecdecError(f"{path}: is a directory, expected a {kind} file")
    if os.path.getsize(path) == 0:
        raise SpecdecError(f"{path}: empty file")


def read_torch_pickle(path: str) -> dict:
    """torch.load with weights_only=True; SoVITS-style files whose "PK" zip magic was replaced by a 2-byte version
    tag are read from a patched in-memory copy."""
    check_file(path, "checkpoint")
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] != b"PK" and data[2:4] == b"\x03\x04":
        data = b"PK" + data[2:]
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpecdecError(f"{path}: corrupt, truncated or not a torch checkpoint ({first[:120]})") from None
    except Exception as e:  # the weights-only unpickler refuses arbitrary objects
        raise SpecdecError(f"{path}: refused to unpickle ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                           "only tensors, dicts, lists and numbers are loaded") from None
    if not isinstance(obj, dict):
        raise SpecdecError(f"{path}: expected a checkpoint dict, found {type(obj).__name__}")
    return obj


def save_checkpoint(obj, path: str) -> None:
    """torch.save atomically, for the project's own resumable training state and caches: a run killed mid-write
    leaves the previous file. Keep `obj` to tensors, dicts, lists and numbers so `load_checkpoint` can read it."""
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str):
    return torch.load(path, map_location="cpu", weights_only=True)


def is_safetensors(path: str) -> bool:
    """safetensors starts with its header length (u64, little-endian) and then the JSON header's `{`."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") + 8 <= os.path.getsize(path)


def read(path: str, format_tag: str, kind: str) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """→ (state, config dict, metadata) of a specdec file whose metadata says format=`format_tag`."""
    from safetensors import SafetensorError, safe_open
    check_file(path, kind)
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise SpecdecError(f"{path}: corrupt or truncated safetensors file ({str(e).splitlines()[0][:120]})") from None
    if meta.get("format") != format_tag or "config" not in meta:
        found = meta.get("format")
        raise SpecdecError(f"{path}: not a specdec {kind} file (format is {found!r}, expected {format_tag!r})")
    try:
        config = json.loads(meta["config"])
    except ValueError as e:
        raise SpecdecError(f"{path}: unreadable config ({e})") from None
    return state, config, meta


def draft_temperature(path: str, meta: dict) -> float:
    """A model file's measured sampling temperature as a draft, ÷ the request's (1 when it records none)."""
    try:
        t = float(json.loads(meta.get("draft_temperature", "1")))
    except (ValueError, TypeError):
        t = float("nan")
    if not 0 < t < float("inf"):
        raise SpecdecError(f"{path}: draft_temperature in the metadata must be a positive number")
    return t


def draft_temperature_meta(t: float) -> dict:
    """The metadata entry `draft_temperature` reads back (none for 1)."""
    return {} if t == 1.0 else {"draft_temperature": t}


def format_of(path: str) -> str | None:
    """The `format` tag of a specdec safetensors file, or None for anything else."""
    from safetensors import safe_open
    try:
        if not is_safetensors(path):
            return None
        with safe_open(path, framework="pt") as f:
            return (f.metadata() or {}).get("format")
    except Exception:  # unreadable: not ours, whatever it is
        return None


def write(path: str, state: dict[str, torch.Tensor], format_tag: str, config: dict, dtype: torch.dtype | None = None,
          **extra) -> None:
    """Write atomically (a crash leaves the old file or none, never half of one). `extra` values are JSON-encoded
    into the metadata beside the config."""
    from safetensors.torch import save_file
    tensors = {k: (v if dtype is None or not v.is_floating_point() else v.to(dtype)).contiguous()
               for k, v in state.items()}
    meta = {"format": format_tag, "config": json.dumps(config), **{k: json.dumps(v) for k, v in extra.items()}}
    tmp = path + ".tmp"
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_state(path: str, model: nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype, kind: str):
    """Load `state` into `model` (eval mode, `dtype`) after checking names and shapes against it."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = ([f"missing {len(missing)} weights (e.g. {missing[0]})"] if missing else []) + \
                ([f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"] if unexpected else [])
        raise SpecdecError(f"{path}: does not match its {kind} config: {'; '.join(parts)}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise SpecdecError(f"{path}: {k} has shape {tuple(v.shape)}, the config implies {tuple(own[k].shape)}")
    model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()})
    return model.to(dtype).eval()
