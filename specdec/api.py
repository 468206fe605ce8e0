"""The drop-in entry points: `load_gpt`, `generate`, `generate_batch`."""
from __future__ import annotations

import weakref

import torch

from specdec.engine import Engine, GenerationOutput, Request
from specdec.models.gpt import GPT
from specdec.sampling import MAX_STEPS, SamplingParams

_engines: "weakref.WeakKeyDictionary[GPT, dict]" = weakref.WeakKeyDictionary()


def engine_for(gpt: GPT, draft=None, k: int = 4, page_size: int | None = None, backend: str | None = None,
               adaptive: bool = False, draft_threshold: float | None = None,
               draft_temperature: float | None = None) -> Engine:
    """A cached Engine per (model, draft, settings): its page pool and draft pages are reused across calls."""
    key = (id(draft) if not isinstance(draft, (str, type(None))) else draft, k, page_size, backend, adaptive,
           draft_threshold, draft_temperature)
    per_model = _engines.setdefault(gpt, {})
    if key not in per_model:
        kw = {} if page_size is None else {"page_size": page_size}
        per_model[key] = Engine(gpt, draft=draft, k=k, backend=backend, adaptive=adaptive,
                                draft_threshold=draft_threshold, draft_temperature=draft_temperature, **kw)
    return per_model[key]


def generate(gpt: GPT, phones: torch.Tensor, prompt: torch.Tensor | None = None, bert: torch.Tensor | None = None, *,
             draft=None, k: int = 4, top_k: int | None = 15, top_p: float = 1.0, temperature: float = 1.0,
             repetition_penalty: float = 1.35, seed: int | None = None, max_new_tokens: int = MAX_STEPS,
             page_size: int | None = None, backend: str | None = None, adaptive: bool = False,
             draft_threshold: float | None = None, draft_temperature: float | None = None) -> GenerationOutput:
    """Semantic tokens for one request, distributed exactly as upstream's sampler would produce them.

    phones [n] long (prompt phones + target phones), prompt [m] long or None (prompt-free), bert [1024, n] or None.
    draft: None (autoregressive), "layerskip:N", "ngram", a GPT, or a path to one; k: drafts per round (the
    maximum with adaptive=True, which picks k per round from observed acceptance and measured costs);
    draft_threshold: stop a round's drafting once the draft drew a token it gave less than this probability;
    draft_temperature: the draft samples at this multiple of `temperature` (exact for any value; None: the draft's
    own, measured by `specdec distill` and stored in its file, else 1).
    """
    params = SamplingParams(top_k=top_k, top_p=top_p, temperature=temperature,
                            repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens, seed=seed)
    return generate_batch(gpt, [Request(phones, prompt, bert, params)], draft=draft, k=k, page_size=page_size,
                          backend=backend, adaptive=adaptive, draft_threshold=draft_threshold,
                          draft_temperature=draft_temperature)[0]


def generate_batch(gpt: GPT, requests: list[Request], *, draft=None, k: int = 4, page_size: int | None = None,
                   backend: str | None = None, adaptive: bool = False, draft_threshold: float | None = None,
                   draft_temperature: float | None = None) -> list[GenerationOutput]:
    """Several requests in one batch; each gets exactly what it would get alone."""
    return engine_for(gpt, draft, k, page_size, backend, adaptive, draft_threshold,
                      draft_temperature).generate(requests)
