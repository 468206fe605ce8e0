"""Audio chunks in step with token generation: windowed decoding with lookahead and equal-power cross-fades.

Tokens arrive a round at a time. Once `first` tokens (then every `chunk` more) exist beyond what was emitted,
plus `lookahead` tokens of right context, the decoder renders tokens [start − overlap, end) with every token so
far as context (`Decoder.decode_window`). The `overlap` tokens at the left edge were already rendered by the
previous window, whose copy of them was held back: the two renderings are cross-faded with complementary
raised-cosine ramps (they sum to one, so where both renderings agree the result is exactly that signal), and no
step or click appears where windows meet. Each window re-renders its samples with more
right context than the one before, which is the only difference from one offline decode of all the tokens
(SoVITS's text encoder attends globally); `tests/test_streaming.py` measures it.

Upstream's own streaming re-decodes *all* tokens per chunk and stitches by a correlation search; users report
clicks and buzz at the seams (peers.md §4). Here a chunk costs the encoder over the tokens so far plus flow and
vocoder over the chunk and its margins.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ChunkPlan:
    first: int = 12  # tokens in the first chunk (0.48 s at 25 Hz): audio starts early
    chunk: int = 25  # tokens per later chunk (1 s)
    lookahead: int = 4  # right context a window waits for (160 ms)
    overlap: int = 2  # tokens re-rendered and cross-faded at each seam (80 ms)

    def __post_init__(self):
        if min(self.first, self.chunk) < 1 or self.lookahead < 0 or not 0 <= self.overlap < min(self.first, self.chunk):
            raise ValueError(f"impossible chunk plan {self}")


def _ramps(n: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fade-out / fade-in over n samples: cos² and sin², which sum to one. The two renderings of a seam are
    nearly the same signal, so amplitude (not power) must be complementary."""
    t = (torch.arange(n, dtype=torch.float32, device=device) + 0.5) / n
    fade_in = torch.sin(0.5 * math.pi * t) ** 2
    return 1.0 - fade_in, fade_in


def stream_decode(rounds: Iterable[list[int]], decoder, phones: torch.Tensor, voice,
                  plan: ChunkPlan = ChunkPlan()) -> Iterator[torch.Tensor]:
    """rounds: the tokens accepted by each generation round, in order. Yields float32 audio chunks whose
    concatenation covers every token (samples_per_token samples each)."""
    spt = decoder.samples_per_token
    tokens: list[int] = []
    emitted = 0  # tokens whose audio is out (the held-back overlap excepted)
    tail: torch.Tensor | None = None  # the previous window's rendering of the overlap, not yet sent

    def render(end: int, final: bool) -> torch.Tensor:
        nonlocal emitted, tail
        start = max(0, emitted - plan.overlap) if tail is not None else emitted
        wav = decoder.decode_window(torch.tensor(tokens, dtype=torch.long), phones, voice, start, end)
        if tail is not None:
            n = tail.shape[0]
            fade_out, fade_in = _ramps(n, wav.device)
            wav = torch.cat([tail * fade_out + wav[:n] * fade_in, wav[n:]])
        keep = 0 if final else min(plan.overlap, end - emitted) * spt
        out, tail = (wav[:-keep], wav[-keep:]) if keep else (wav, None)
        emitted = end
        return out

    for new in rounds:
        tokens += new
        while True:
            size = plan.first if emitted == 0 else plan.chunk
            if len(tokens) - emitted < size + plan.lookahead:
                break
            yield render(emitted + size, final=False)
    if len(tokens) > emitted or tail is not None:
        if len(tokens) > emitted:
            yield render(len(tokens), final=True)
        else:  # nothing new since the last window: its held-back overlap closes the stream as rendered
            yield tail
