"""Text to audio: front-end → GPT (speculative, exact) → decoder, segment by segment, audio streamed in step.

    tts = TTS(gpt, decoder, frontend, draft="layerskip:4", k=4)
    audio, stats = synthesize("Hello there.", tts, voice)
    for chunk in stream("Hello there.", tts, voice): play(chunk)

Each text segment is one GPT request: the voice's transcript phones + the segment's phones as text, the voice's
semantic tokens as prompt (upstream's layout). The decoder gets the segment's phones only, as SoVITS expects.
Segments are joined by `fragment_interval` seconds of silence (upstream: 0.3 s).
"""
from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from specdec.api import engine_for
from specdec.engine import Request
from specdec.errors import SpecdecError
from specdec.models.gpt import GPT
from specdec.sampling import SamplingParams
from specdec.stats import SpecStats
from specdec.streaming import ChunkPlan, stream_decode
from specdec.voices import Voice

OFFLINE = ChunkPlan(first=10**9, chunk=10**9, lookahead=0, overlap=0)  # one window per segment: the exact decode


class Frontend(Protocol):
    symbol_version: str

    def split(self, text: str, method: str) -> list[str]: ...

    def phones(self, text: str, language: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """→ phone ids [n] long and BERT features [1024, n] (None when zeros)."""


WARM_UP_TEXT = {"en": "Warming up 123 voices, specdec.", "zh": "预热一下，123，specdec。"}  # numbers, an unknown word


@dataclass
class TTS:
    gpt: GPT
    decoder: object  # specdec.models.decoder.Decoder
    frontend: Frontend
    draft: object = None  # None | "layerskip:N" | "ngram" | GPT | path
    k: int = 4
    adaptive: bool = False
    draft_threshold: float | None = None
    draft_temperature: float | None = None  # None: the draft's own

    def engine(self):
        return engine_for(self.gpt, self.draft, self.k, adaptive=self.adaptive, draft_threshold=self.draft_threshold,
                          draft_temperature=self.draft_temperature)

    def warm_up(self, voice: Voice) -> None:
        """Pay the one-time costs before the first request instead of inside its time to first audio: the text
        front-end's lazily loaded data (dictionaries, the out-of-vocabulary word splitter and predictor, number
        reading), the GPT's and draft's first passes (the CPU kernels are built and the weights packed) and the
        decoder's first calls — by speaking a short sentence that touches all of them."""
        synthesize(WARM_UP_TEXT.get(voice.language, voice.text), self, voice, streaming=True,
                   language=voice.language, params=SamplingParams(max_new_tokens=30, seed=0))


@dataclass
class SynthStats:
    gpt: SpecStats = field(default_factory=SpecStats)
    segments: int = 0
    frontend_s: float = 0.0
    gpt_s: float = 0.0
    decode_s: float = 0.0
    first_chunk_s: float = 0.0  # from the call to the first audio chunk
    audio_s: float = 0.0
    wall_s: float = 0.0

    @property
    def rtf(self) -> float:
        return self.wall_s / self.audio_s if self.audio_s else float("inf")

    @property
    def gpt_tokens_per_s(self) -> float:
        return self.gpt.num_emitted_tokens / self.gpt_s if self.gpt_s else 0.0

    def to_dict(self) -> dict:
        g = self.gpt
        return {"tokens": g.num_emitted_tokens, "target_passes": g.target_passes,
                "gpt_tokens_per_s": self.gpt_tokens_per_s, "mean_acceptance_length": g.mean_acceptance_length,
                "draft_acceptance_rate": g.draft_acceptance_rate, "acceptance_per_position": g.acceptance_per_position,
                "num_drafts": g.num_drafts, "num_draft_tokens": g.num_draft_tokens,
                "num_accepted_tokens": g.num_accepted_tokens, "draft_s": g.draft_s, "verify_s": g.verify_s,
                "prefill_s": g.prefill_s, "first_chunk_s": self.first_chunk_s, "rtf": self.rtf,
                "audio_s": self.audio_s, "segments": self.segments, "frontend_s": self.frontend_s,
                "gpt_s": self.gpt_s, "decode_s": self.decode_s, "wall_s": self.wall_s, "lossy": g.lossy}


def _check_voice(tts: TTS, voice: Voice) -> None:
    if voice.symbol_version != tts.frontend.symbol_version:
        raise SpecdecError(f"voice {voice.name!r} uses the {voice.symbol_version} symbol set, the model "
                           f"{tts.frontend.symbol_version}: recreate the voice for this model")


def _request(voice: Voice, phones: torch.Tensor, bert: torch.Tensor | None, params: SamplingParams) -> Request:
    text = torch.cat([voice.phones, phones])
    if bert is None and voice.bert is None:
        full_bert = None
    else:
        def z(n):
            return torch.zeros(1024, n)
        full_bert = torch.cat([voice.bert if voice.bert is not None else z(voice.phones.numel()),
                               bert if bert is not None else z(phones.numel())], dim=1)
    return Request(text, voice.tokens, full_bert, params)


def stream(text: str, tts: TTS, voice: Voice, *, language: str | None = None, text_split: str = "cut1",
           params: SamplingParams = SamplingParams(), plan: ChunkPlan = ChunkPlan(),
           fragment_interval: float = 0.3) -> Generator[np.ndarray, None, SynthStats]:
    """Yield float32 audio chunks as tokens are accepted; returns the statistics."""
    t0 = time.perf_counter()
    _check_voice(tts, voice)
    stats = SynthStats()
    sr = tts.decoder.sample_rate
    t = time.perf_counter()
    segments = [s for s in tts.frontend.split(text, text_split) if s.strip()]
    if not segments:
        raise SpecdecError("nothing to say: the text is empty after splitting")
    stats.frontend_s += time.perf_counter() - t
    engine = tts.engine()
    for i, segment in enumerate(segments):
        t = time.perf_counter()
        phones, bert = tts.frontend.phones(segment, language or voice.language)
        stats.frontend_s += time.perf_counter() - t
        request = _request(voice, phones, bert, params if params.seed is None else
                           SamplingParams(**{**params.__dict__, "seed": params.seed + i}))
        run = engine.stream([request])
        outputs: list = []
        for chunk in _timed_decode(_rounds(run, outputs, stats), tts.decoder, phones, voice, plan, stats):
            yield from _emit(chunk.numpy(), stats, t0, sr)
        stats.gpt = stats.gpt.merge(outputs[0].stats)
        stats.segments += 1
        if i + 1 < len(segments) and fragment_interval > 0:
            yield from _emit(np.zeros(int(round(fragment_interval * sr)), dtype=np.float32), stats, t0, sr)
    stats.wall_s = time.perf_counter() - t0
    return stats


def _rounds(run, outputs: list, stats: SynthStats) -> Iterator[list[int]]:
    """The engine's per-round tokens, timing the GPT as it goes."""
    while True:
        t = time.perf_counter()
        try:
            _, tokens = next(run)
        except StopIteration as done:
            outputs.extend(done.value)
            stats.gpt_s += time.perf_counter() - t
            return
        stats.gpt_s += time.perf_counter() - t
        yield tokens


def _timed_decode(rounds: Iterator[list[int]], decoder, phones, voice, plan: ChunkPlan, stats: SynthStats):
    chunks = stream_decode(rounds, decoder, phones, voice, plan)
    while True:
        t, gpt_before = time.perf_counter(), stats.gpt_s
        try:
            chunk = next(chunks)
        except StopIteration:
            return
        stats.decode_s += time.perf_counter() - t - (stats.gpt_s - gpt_before)
        yield chunk


def _emit(chunk: np.ndarray, stats: SynthStats, t0: float, sr: int) -> Iterator[np.ndarray]:
    if not chunk.size:
        return
    if stats.audio_s == 0.0:
        stats.first_chunk_s = time.perf_counter() - t0
    stats.audio_s += chunk.size / sr
    yield chunk.astype(np.float32, copy=False)


def synthesize(text: str, tts: TTS, voice: Voice, *, streaming: bool = False, **kw) -> tuple[np.ndarray, SynthStats]:
    """The whole utterance as float32 [N] at the decoder's rate, and the statistics. Non-streaming decodes each
    segment in one window once its tokens are complete (the exact offline decode)."""
    if not streaming:
        kw.setdefault("plan", OFFLINE)
    run = stream(text, tts, voice, **kw)
    chunks = []
    while True:
        try:
            chunks.append(next(run))
        except StopIteration as done:
            return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), done.value


def write_wav(path: str, audio: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM wav written atomically: a failed run never leaves a half-written file."""
    import os

    import soundfile as sf
    tmp = path + ".partial"
    try:
        sf.write(tmp, np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)

