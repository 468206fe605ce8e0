"""Upstream GPT-SoVITS (PyPI `gpt-sovits-cpufast==0.1.0`, installed --no-deps) as an oracle.

After any change to the weights, `rebuild_t2s_transformer()` must run: the fork's inference blocks keep
transposed copies of the weights (gpt-sovits.md §10).
"""
from __future__ import annotations

import os

import pytest
import torch

from specdec.errors import SpecdecError
from specdec.upstream import import_upstream


def require_upstream() -> str:
    """Put upstream's tree on sys.path (specdec.upstream.import_upstream) and return its folder; fail loudly
    when it is missing."""
    try:
        return os.path.dirname(import_upstream("AR").__path__[0])
    except SpecdecError as e:
        pytest.fail(str(e))


def upstream_config(n_layer: int, d_model: int, n_head: int, phoneme_vocab_size: int, vocab_size: int = 1025) -> dict:
    return {"model": {"hidden_dim": d_model, "embedding_dim": d_model, "head": n_head, "n_layer": n_layer,
                      "vocab_size": vocab_size, "phoneme_vocab_size": phoneme_vocab_size, "dropout": 0,
                      "EOS": vocab_size - 1, "linear_units": 2048},
            "data": {"max_sec": 54}}


def randomize_(module: torch.nn.Module, seed: int, eos_bias: float = 0.0) -> None:
    """Random weights with sane scales (LayerNorm gains near 1, small biases); optionally make EOS likelier so
    generations end by themselves."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("alpha"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
        head = dict(module.named_parameters()).get("ar_predict_layer.weight")
        if head is None:
            head = dict(module.named_parameters())["head.weight"]
        head[-1] *= 1.0 + eos_bias


def make_upstream_gpt(n_layer=2, d_model=64, n_head=4, phoneme_vocab_size=512, seed=0, eos_bias=0.0):
    require_upstream()
    from AR.models.t2s_model import Text2SemanticDecoder
    config = upstream_config(n_layer, d_model, n_head, phoneme_vocab_size)
    model = Text2SemanticDecoder(config, top_k=3)
    randomize_(model, seed, eos_bias)
    model.rebuild_t2s_transformer()
    return model.eval(), config


def save_upstream_ckpt(model, config: dict, path: str, dtype=torch.float16) -> None:
    weight = {"model." + k: v.detach().to(dtype) for k, v in model.state_dict().items()}
    torch.save({"weight": weight, "config": config, "info": "GPT-e0"}, path)


def upstream_generate(model, phones, prompt, bert=None, *, top_k=15, top_p=1.0, temperature=1.0,
                      repetition_penalty=1.35, early_stop_num=-1, seed=0):
    """Upstream infer_panel (infer_panel_naive); returns (generated tokens, per-step logits [steps, V])."""
    seen = []
    hook = model.ar_predict_layer.register_forward_hook(lambda m, i, o: seen.append(o[0].detach().clone()))
    n = phones.numel()
    bert = torch.zeros(1, 1024, n) if bert is None else bert[None]
    torch.manual_seed(seed)
    try:
        with torch.no_grad():
            y, idx = model.infer_panel(phones[None], torch.tensor([n]), None if prompt is None else prompt[None],
                                       bert, top_k=top_k, top_p=top_p, early_stop_num=early_stop_num,
                                       temperature=temperature, repetition_penalty=repetition_penalty)
    finally:
        hook.remove()
    m = 0 if prompt is None else prompt.numel()
    return y[0, m:].long(), torch.stack(seen) if seen else None
