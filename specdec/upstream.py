"""Upstream GPT-SoVITS interop: `install()` into an unmodified pipeline, and importing upstream as an oracle.

`install()` runs an unmodified upstream GPT-SoVITS pipeline's GPT through specdec.

Patches one `Text2SemanticDecoder` instance so that `infer_panel_naive` (and through it `infer_panel` and
`infer_panel_naive_batched`) and `infer_panel_batch_infer` keep their arguments and their `(y, idx)` contracts but
generate with specdec's engine. Sampling draws from torch's default generator, as upstream does, so a pipeline
that seeds torch gets the same tokens as before when `draft=None` (and the same distribution with a draft).
"""
from __future__ import annotations

import importlib.util
import os
import sys
import types

import torch

from specdec.api import engine_for
from specdec.engine import Request
from specdec.errors import SpecdecError
from specdec.models.checkpoint import upstream_to_specdec
from specdec.models.gpt import GPT, GPTConfig
from specdec.sampling import MAX_STEPS, SamplingParams


def gpt_from_upstream(model: torch.nn.Module) -> GPT:
    """A specdec GPT with the weights of an upstream Text2SemanticDecoder (fp32, on CPU)."""
    cfg = GPTConfig(n_layer=model.num_layers, d_model=model.model_dim, n_head=model.num_head,
                    vocab_size=model.vocab_size, phoneme_vocab_size=model.phoneme_vocab_size)
    state = {upstream_to_specdec(k): v.detach().float().cpu() for k, v in model.state_dict().items()
             if upstream_to_specdec(k) is not None}
    gpt = GPT(cfg)
    gpt.load_state_dict(state)
    return gpt.eval()


def install(model: torch.nn.Module, draft=None, k: int = 4, draft_temperature: float | None = None
            ) -> torch.nn.Module:
    """Patch an upstream Text2SemanticDecoder (or a lightning module holding one as `.model`) in place;
    draft_temperature as for `specdec.generate` (None: the draft's own)."""
    t2s = getattr(model, "model", model)
    if not all(hasattr(t2s, a) for a in ("infer_panel_naive", "ar_predict_layer", "num_layers")):
        raise SpecdecError(f"install() needs an upstream Text2SemanticDecoder, got {type(model).__name__}")
    gpt = gpt_from_upstream(t2s)
    engine = engine_for(gpt, draft, k, draft_temperature=draft_temperature)
    original_naive = t2s.infer_panel_naive

    def params(top_k, top_p, early_stop_num, temperature, repetition_penalty) -> SamplingParams:
        limit = MAX_STEPS if early_stop_num in (-1, None) else min(MAX_STEPS, early_stop_num + 1)
        return SamplingParams(top_k=top_k, top_p=min(float(top_p), 1.0), temperature=temperature,
                              repetition_penalty=repetition_penalty, max_new_tokens=limit)

    def request(phones, prompt, bert, p) -> Request:
        return Request(phones.long().cpu(), None if prompt is None else prompt.long().cpu(),
                       bert.float().cpu(), p, generator=torch.default_generator)

    def idx_of(out) -> int:
        # upstream's idx is the index of the last loop step: the dropped EOS step, or the last kept token
        return len(out.tokens) if out.finish_reason == "stop" else len(out.tokens) - 1

    def infer_panel_naive(self, x, x_lens, prompts, bert_feature, top_k=-100, top_p=100, early_stop_num=-1,
                          temperature=1.0, repetition_penalty=1.35, streaming_mode=False, chunk_length=24, **kwargs):
        if streaming_mode or x.shape[0] != 1:  # token-chunk streaming and coupled batches keep upstream's loop
            yield from original_naive(x, x_lens, prompts, bert_feature, top_k, top_p, early_stop_num, temperature,
                                      repetition_penalty, streaming_mode, chunk_length, **kwargs)
            return
        p = params(top_k, top_p, early_stop_num, temperature, repetition_penalty)
        out = engine.generate([request(x[0], None if prompts is None else prompts[0], bert_feature[0], p)])[0]
        gen = out.tokens.to(x.device)
        if prompts is None:
            y = (gen if len(gen) else torch.zeros(1, dtype=torch.long, device=x.device))[None].int()
            yield y, 0  # upstream's prompt-free path yields idx 0; callers then keep all of y
            return
        yield torch.cat([prompts[0], gen.to(prompts.dtype)])[None], idx_of(out)

    def infer_panel_batch_infer(self, x, x_lens, prompts, bert_feature, top_k=-100, top_p=100, early_stop_num=-1,
                                temperature=1.0, repetition_penalty=1.35, **kwargs):
        if prompts is None:
            return self.infer_panel_naive_batched(x, x_lens, prompts, bert_feature, top_k=top_k, top_p=top_p,
                                                  early_stop_num=early_stop_num, temperature=temperature, **kwargs)
        p = params(top_k, top_p, early_stop_num, temperature, repetition_penalty)
        outs = engine.generate([request(xi, prompts[i], bi, p) for i, (xi, bi) in enumerate(zip(x, bert_feature))])
        y_list = [torch.cat([prompts[i], o.tokens.to(prompts.device, prompts.dtype)]) for i, o in enumerate(outs)]
        return y_list, [idx_of(o) for o in outs]

    t2s.infer_panel_naive = types.MethodType(infer_panel_naive, t2s)
    t2s.infer_panel_batch_infer = types.MethodType(infer_panel_batch_infer, t2s)
    t2s.specdec_engine = engine
    return model


def import_upstream(module: str):
    """Import a module of upstream's `GPT_SoVITS/` tree (PyPI `gpt-sovits-cpufast`, installed --no-deps).

    Its modules import each other as top-level `AR.…`, so its folder goes on sys.path; the training-only
    torchmetrics import is stubbed when torchmetrics is absent."""
    spec = importlib.util.find_spec("GPT_SoVITS")
    if spec is None or not spec.origin:
        raise SpecdecError("upstream GPT-SoVITS not installed: pip install --no-deps gpt-sovits-cpufast==0.1.0")
    root = os.path.dirname(spec.origin)
    if root not in sys.path:
        sys.path.insert(0, root)
    if "torchmetrics" not in sys.modules and importlib.util.find_spec("torchmetrics") is None:
        tm, cls = types.ModuleType("torchmetrics"), types.ModuleType("torchmetrics.classification")
        cls.MulticlassAccuracy = lambda *a, **k: torch.nn.Identity()
        tm.classification = cls
        sys.modules["torchmetrics"], sys.modules["torchmetrics.classification"] = tm, cls
    return importlib.import_module(module)


def upstream_t2s(cfg: GPTConfig, state: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """An upstream Text2SemanticDecoder of this shape, with specdec-named weights `state` if given."""
    T2S = import_upstream("AR.models.t2s_model").Text2SemanticDecoder
    config = {"model": {"hidden_dim": cfg.d_model, "embedding_dim": cfg.d_model, "head": cfg.n_head,
                        "n_layer": cfg.n_layer, "vocab_size": cfg.vocab_size,
                        "phoneme_vocab_size": cfg.phoneme_vocab_size,
                        "dropout": 0, "EOS": cfg.eos}}
    model = T2S(config, top_k=3)
    if state is not None:
        from specdec.models.checkpoint import specdec_to_upstream
        model.load_state_dict({specdec_to_upstream(k).removeprefix("model."): v for k, v in state.items()})
    model.rebuild_t2s_transformer()  # the fork's inference blocks copy the weights at build time
    return model.eval()
