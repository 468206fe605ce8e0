"""GPT checkpoints: upstream `.ckpt` (read) and the project's safetensors format (read and write).

Upstream GPT `.ckpt` = torch.save({"weight": state_dict (keys prefixed "model.", usually fp16), "config": the
training YAML as a dict, "info": "GPT-e…"}). It is read with `torch.load(weights_only=True)`: tensors, dicts,
lists and scalars only, never arbitrary pickled objects.

specdec format = one `.safetensors` file whose metadata holds {"format": "specdec-gpt", "config": GPTConfig JSON}.
"""
from __future__ import annotations

import re

import torch
from specdec.models import weights
from specdec.models.gpt import GPT, GPTConfig

from specdec.errors import SpecdecError

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
def _config_from_upstream(path: str, config: dict) -> GPTConfig:
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


def load_upstream_gpt(path: str, dtype: torch.dtype = torch.float32) -> GPT:
    ckpt = weights.read_torch_pickle(path)
    tensors, config = ckpt.get("weight"), ckpt.get("config")
    if not isinstance(tensors, dict) or not isinstance(config, dict):
        raise SpecdecError(f"{path}: not a GPT-SoVITS GPT checkpoint (expected 'weight' and 'config' entries)")
    if any(k.startswith(("enc_p.", "dec.", "flow.")) for k in tensors):
        raise SpecdecError(f"{path}: this is a SoVITS checkpoint, not a GPT one")
    cfg = _config_from_upstream(path, config)
    state = {}
    for k, v in tensors.items():
        new = upstream_to_specdec(k)
        state[new if new is not None else k] = v
    return weights.load_state(path, GPT(cfg), state, dtype, "GPT")


def load_gpt(path: str, dtype: torch.dtype = torch.float32) -> GPT:
    """Read an upstream GPT `.ckpt` or a specdec `.safetensors` file into a GPT in eval mode."""
    weights.check_file(path, "GPT checkpoint")
    if weights.is_safetensors(path):
        state, config, meta = weights.read(path, FORMAT_TAG, "GPT")
        model = weights.load_state(path, GPT(GPTConfig.from_dict(config)), state, dtype, "GPT")
        model.draft_temperature = weights.draft_temperature(path, meta)
        return model
    return load_upstream_gpt(path, dtype)


# ---- writing ------------------------------------------------------------------------------------------------
def save_gpt(model: GPT, path: str, dtype: torch.dtype | None = None, extra: dict | None = None) -> None:
    """Write a specdec `.safetensors` (weights + config in the metadata) atomically."""
    if model.quantization is not None:
        raise SpecdecError(f"{path}: refusing to save a {model.quantization} GPT; save the original and quantise "
                           "after loading (specdec.quantize_gpt)")
    weights.write(path, model.state_dict(), FORMAT_TAG, model.cfg.to_dict(), dtype,
                  **weights.draft_temperature_meta(model.draft_temperature), **(extra or {}))


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
