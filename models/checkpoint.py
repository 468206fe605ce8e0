"""GPT checkpoints: upstream `.ckpt` (read) and the project's safetensors format (read and write).

Upstream GPT `.ckpt` = torch.save({"weight": state_dict (keys prefixed "model.", usually fp16), "config": the
training YAML as a dict, "info": "GPT-e…"}). It is read with `torch.load(weights_only=True)`: tensors, dicts,
lists and scalars only, never arbitrary pickled objects.

specdec format = one `.safetensors` file whose metadata holds {"format": "specdec-gpt", "config": GPTConfig JSON}.
"""
from __future__ import annotations

import json
import os
import re
import zipfile

import torch

from specdec.errors import SpecdecError
from specdec.models.gpt import GPT, GPTConfig

FORMAT_TAG = "specdec-gpt"

# upstream Text2SemanticDecoder key (without "model.") → specdec GPT key
_UPSTREAM_KEYS = {
    "bert_proj.weight": "bert_proj.weight",
    "bert_proj.bias": "bert_proj.bias",
    "ar_text_embedding.word_embeddings.weight": "text_embedding.weight",
    "ar_text_position.alpha": "text_alpha",
    "ar_audio_embedding.word_embeddings.weight": "audio_embedding.weight",
    "ar_audio_position.alpha": "audio_alpha",
    "ar_predict_layer.weight": "head.weight",
}
_UPSTREAM_LAYER_KEYS = {
    "self_attn.in_proj_weight": "qkv.weight",
    "self_attn.in_proj_bias": "qkv.bias",
    "self_attn.out_proj.weight": "out.weight",
    "self_attn.out_proj.bias": "out.bias",
    "linear1.weight": "ffn_in.weight",
    "linear1.bias": "ffn_in.bias",
    "linear2.weight": "ffn_out.weight",
    "linear2.bias": "ffn_out.bias",
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
}
_LAYER_RE = re.compile(r"^h\.layers\.(\d+)\.(.+)$")


def upstream_to_specdec(key: str) -> str | None:
    key = key.removeprefix("model.")
    if key in _UPSTREAM_KEYS:
        return _UPSTREAM_KEYS[key]
    m = _LAYER_RE.match(key)
    if m and m.group(2) in _UPSTREAM_LAYER_KEYS:
        return f"layers.{m.group(1)}.{_UPSTREAM_LAYER_KEYS[m.group(2)]}"
    return None


def specdec_to_upstream(key: str) -> str:
    inverse = {v: k for k, v in _UPSTREAM_KEYS.items()}
    if key in inverse:
        return "model." + inverse[key]
    layer, rest = key.removeprefix("layers.").split(".", 1)
    return f"model.h.layers.{layer}." + {v: k for k, v in _UPSTREAM_LAYER_KEYS.items()}[rest]


# ---- reading ------------------------------------------------------------------------------------------------
def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise SpecdecError(f"{path}: no such file")
    if os.path.isdir(path):
        raise SpecdecError(f"{path}: is a directory, expected a GPT checkpoint file")
    if os.path.getsize(path) == 0:
        raise SpecdecError(f"{path}: empty file")


def read_torch_pickle(path: str) -> dict:
    """torch.load with weights_only=True; SoVITS-style files whose "PK" zip magic was replaced by a 2-byte version
    tag are read from a patched in-memory copy."""
    _check_file(path)
    import io
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


def _config_from_upstream(path: str, config: dict, weights: dict) -> GPTConfig:
    try:
        m = config["model"]
        cfg = GPTConfig(n_layer=int(m["n_layer"]), d_model=int(m["hidden_dim"]), n_head=int(m["head"]),
                        vocab_size=int(m["vocab_size"]), phoneme_vocab_size=int(m["phoneme_vocab_size"]))
        eos = int(m.get("EOS", cfg.eos))
    except (KeyError, TypeError, ValueError) as e:
        raise SpecdecError(f"{path}: GPT config lacks model.{e.args[0] if e.args else '?'}") from None
    if eos != cfg.eos:
        raise SpecdecError(f"{path}: EOS {eos} must be vocab_size - 1 = {cfg.eos}")
    if int(m.get("embedding_dim", cfg.d_model)) != cfg.d_model:
        raise SpecdecError(f"{path}: embedding_dim {m['embedding_dim']} differs from hidden_dim {cfg.d_model}")
    return cfg


def _load_state(path: str, model: GPT, state: dict[str, torch.Tensor], dtype: torch.dtype) -> GPT:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} weights (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise SpecdecError(f"{path}: does not match its config: {'; '.join(parts)}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise SpecdecError(f"{path}: {k} has shape {tuple(v.shape)}, config implies {tuple(own[k].shape)}")
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()})
    return model.to(dtype).eval()


def load_upstream_gpt(path: str, dtype: torch.dtype = torch.float32) -> GPT:
    ckpt = read_torch_pickle(path)
    weights, config = ckpt.get("weight"), ckpt.get("config")
    if not isinstance(weights, dict) or not isinstance(config, dict):
        raise SpecdecError(f"{path}: not a GPT-SoVITS GPT checkpoint (expected 'weight' and 'config' entries)")
    if any(k.startswith(("enc_p.", "dec.", "flow.")) for k in weights):
        raise SpecdecError(f"{path}: this is a SoVITS checkpoint, not a GPT one")
    cfg = _config_from_upstream(path, config, weights)
    state = {}
    for k, v in weights.items():
        new = upstream_to_specdec(k)
        state[new if new is not None else k] = v
    return _load_state(path, GPT(cfg), state, dtype)


def load_gpt(path: str, dtype: torch.dtype = torch.float32) -> GPT:
    """Read an upstream GPT `.ckpt` or a specdec `.safetensors` file into a GPT in eval mode."""
    _check_file(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) == 8 and not head.startswith(b"PK") and int.from_bytes(head, "little") < 100_000_000:
        return _load_safetensors(path, dtype)  # safetensors starts with its header length (u64, little-endian)
    return load_upstream_gpt(path, dtype)


def _load_safetensors(path: str, dtype: torch.dtype) -> GPT:
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise SpecdecError(f"{path}: corrupt or truncated safetensors file ({str(e).splitlines()[0][:120]})") from None
    if meta.get("format") != FORMAT_TAG or "config" not in meta:
        raise SpecdecError(f"{path}: not a specdec GPT file (metadata lacks format={FORMAT_TAG} and config)")
    try:
        cfg = GPTConfig.from_dict(json.loads(meta["config"]))
    except (ValueError, TypeError) as e:
        raise SpecdecError(f"{path}: unreadable config ({e})") from None
    return _load_state(path, GPT(cfg), state, dtype)


# ---- writing ------------------------------------------------------------------------------------------------
def save_gpt(model: GPT, path: str, dtype: torch.dtype | None = None, extra: dict | None = None) -> None:
    """Write a specdec `.safetensors` (weights + config in the metadata) atomically."""
    from safetensors.torch import save_file
    state = {k: (v if dtype is None else v.to(dtype)).contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT_TAG, "config": json.dumps(model.cfg.to_dict())}
    meta.update({k: json.dumps(v) for k, v in (extra or {}).items()})
    tmp = path + ".tmp"
    save_file(state, tmp, metadata=meta)
    os.replace(tmp, path)


def upstream_checkpoint(model: GPT, dtype: torch.dtype = torch.float16) -> dict:
    """The dict upstream's s1_train.py would save for this model (used to write fixtures and by `convert`'s
    round-trip tests)."""
    c = model.cfg
    weight = {specdec_to_upstream(k): v.to(dtype).contiguous() for k, v in model.state_dict().items()}
    config = {"model": {"hidden_dim": c.d_model, "embedding_dim": c.d_model, "head": c.n_head,
                        "n_layer": c.n_layer, "vocab_size": c.vocab_size, "phoneme_vocab_size": c.phoneme_vocab_size,
                        "dropout": 0, "EOS": c.eos, "linear_units": 4 * c.d_model},
              "data": {"max_sec": 54}}
    return {"weight": weight, "config": config, "info": "GPT-e0"}
