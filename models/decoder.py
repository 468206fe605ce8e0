"""The decoder interface the pipeline streams through, and its SoVITS implementation.

A decoder turns semantic tokens (25 Hz) plus the target phones into audio, conditioned on a voice:

    decode(tokens [T], phones [N], voice)              -> float32 [T · samples_per_token]
    decode_window(tokens, phones, voice, start, end)   -> float32 [(end - start) · samples_per_token]

`decode_window` returns the samples of tokens[start:end] only, computed with every token in `tokens` as context.
For SoVITS that is *exactly* the matching slice of `decode(tokens, ...)`: the text encoder always sees the whole
window, and the flow and the HiFi-GAN (finite receptive fields) run on the slice plus a margin that covers them.
So a streaming pipeline can emit audio chunk by chunk with `decode_window(all tokens so far, phones, voice,
start, end)`, holding back `end` until a few lookahead tokens exist: the only difference from an offline decode is
the lookahead (the text encoder's attention is global), and the cost per chunk is the encoder over the window (cheap)
plus flow and vocoder over the chunk and the margins. Noise (noise_scale > 0) is addressed by latent-frame position,
so overlapping windows draw the same noise for the same frame.

`voice` is duck-typed: `refer_spec` ([1025, Tspec] linear spectrogram, or a list of them = upstream aux refs,
averaged) and, for v2Pro/ProPlus, `sv_emb` ([20480] ERes2NetV2 embedding, or a list matching refer_spec).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from specdec.errors import SpecdecError
from specdec.models.sovits import CODEBOOK_SIZE, SV_DIM, SoVITS, Style, flow_radius, generator_radius

NOISE_BLOCK = 64  # latent frames per independently seeded noise block


@runtime_checkable
class Decoder(Protocol):
    sample_rate: int
    samples_per_token: int

    def decode(self, tokens: torch.Tensor, phones: torch.Tensor, voice) -> torch.Tensor: ...

    def decode_window(self, tokens: torch.Tensor, phones: torch.Tensor, voice, start: int, end: int) -> torch.Tensor:
        ...


class SoVITSDecoder:
    """GPT-SoVITS v1/v2/v2Pro/v2ProPlus decode. `noise_scale` as upstream (0.5 by default; 0 = deterministic mean)."""

    def __init__(self, model: SoVITS, noise_scale: float = 0.5, seed: int = 0):
        self.model = model
        self.cfg = model.cfg
        self.noise_scale, self.seed = float(noise_scale), int(seed)
        self.sample_rate = self.cfg.sampling_rate
        self.samples_per_token = self.cfg.samples_per_token
        self._style_key: tuple | None = None
        self._style: Style | None = None

    @classmethod
    def from_file(cls, path: str, **kw) -> "SoVITSDecoder":
        from specdec.models.sovits_checkpoint import load_sovits
        return cls(load_sovits(path), **kw)

    # ---- style (ge), cached for the last voice ----------------------------------------------------------------
    def style(self, voice) -> Style:
        specs, embs = self._voice_inputs(voice)
        key = tuple((t, t._version) for t in specs + embs)
        if self._style_key is None or len(key) != len(self._style_key) or \
                any(a is not b or va != vb for (a, va), (b, vb) in zip(key, self._style_key)):
            with torch.inference_mode():
                self._style = self.model.style(specs, embs if self.cfg.is_pro else None)
            self._style_key = key  # holds the tensors, so their ids stay unique while cached
        return self._style

    def _voice_inputs(self, voice) -> tuple[list, list]:
        spec = getattr(voice, "refer_spec", None)
        specs = list(spec) if isinstance(spec, (list, tuple)) else [spec]
        n_bins = self.cfg.filter_length // 2 + 1
        for s in specs:
            if not isinstance(s, torch.Tensor) or s.ndim != 2 or s.shape[0] != n_bins or s.shape[1] < 1:
                got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
                raise SpecdecError(f"voice.refer_spec must be a [{n_bins}, T] linear spectrogram, got {got}")
        if not self.cfg.is_pro:
            return specs, []
        emb = getattr(voice, "sv_emb", None)
        if emb is None:
            raise SpecdecError(f"SoVITS {self.cfg.version} needs the voice's speaker embedding (sv_emb), computed by "
                               "ERes2NetV2 from sv/pretrained_eres2netv2w24s4ep4.ckpt, and this voice has none")
        embs = list(emb) if isinstance(emb, (list, tuple)) else [emb]
        if len(embs) != len(specs) or any(e.shape != (SV_DIM,) for e in embs):
            raise SpecdecError(f"voice.sv_emb must be one [{SV_DIM}] embedding per reference spectrogram "
                               f"({len(specs)}), got {[tuple(e.shape) for e in embs]}")
        return specs, embs

    # ---- decoding -------------------------------------------------------------------------------------------
    def decode(self, tokens: torch.Tensor, phones: torch.Tensor, voice, speed: float = 1.0) -> torch.Tensor:
        """→ float32 [T·1280] at 32 kHz (speed 1). speed ≠ 1 stretches the latent as upstream does
        (int(2T/speed) + 1 frames)."""
        if speed == 1.0:
            return self.decode_window(tokens, phones, voice, 0, len(tokens))
        if not speed > 0:
            raise SpecdecError(f"speed must be positive, got {speed}")
        tokens, phones = self._check(tokens, phones)
        style = self.style(voice)
        with torch.inference_mode():
            m, logs = self.model.encode(tokens, phones, style, speed)
            z_p = self._sample(m, logs, 0)
            return self.model.synthesize(z_p, style)[0].float()

    def decode_window(self, tokens: torch.Tensor, phones: torch.Tensor, voice, start: int, end: int) -> torch.Tensor:
        tokens, phones = self._check(tokens, phones)
        if not 0 <= start < end <= len(tokens):
            raise SpecdecError(f"decode window [{start}, {end}) is not inside the {len(tokens)} tokens given")
        style = self.style(voice)
        L, lo, hi = 2 * len(tokens), 2 * start, 2 * end  # latent frames (50 Hz)
        d_lo, d_hi = max(0, lo - generator_radius(self.cfg)), min(L, hi + generator_radius(self.cfg))
        f_lo, f_hi = max(0, d_lo - flow_radius(self.cfg)), min(L, d_hi + flow_radius(self.cfg))
        with torch.inference_mode():
            m, logs = self.model.encode(tokens, phones, style)  # [1, 192, L]: the encoder sees the whole window
            z_p = self._sample(m[..., f_lo:f_hi], logs[..., f_lo:f_hi], f_lo)
            z = self.model.flow.reverse(z_p, style.ge)[..., d_lo - f_lo:d_hi - f_lo]
            wav = self.model.dec(z, style.ge)[0, 0]
        hop = self.cfg.hop_length
        return wav[(lo - d_lo) * hop:(hi - d_lo) * hop].float()

    def _sample(self, m, logs, first_frame: int):
        if self.noise_scale == 0.0:
            return m
        return m + self._noise(first_frame, m.shape[-1]).to(m.dtype) * torch.exp(logs) * self.noise_scale

    def _noise(self, first: int, n: int) -> torch.Tensor:
        """[1, 192, n] standard normal noise for latent frames first..first+n, a pure function of (seed, frame)."""
        C, blocks = self.cfg.inter_channels, []
        for b in range(first // NOISE_BLOCK, (first + n - 1) // NOISE_BLOCK + 1):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + b)
            blocks.append(torch.randn(NOISE_BLOCK, C, generator=g))
        noise = torch.cat(blocks)[first % NOISE_BLOCK:first % NOISE_BLOCK + n]  # [n, C]
        return noise.t()[None]

    def _check(self, tokens: torch.Tensor, phones: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, phones = torch.as_tensor(tokens), torch.as_tensor(phones)
        if tokens.ndim != 1 or tokens.numel() == 0 or tokens.is_floating_point():
            raise SpecdecError(f"tokens must be a non-empty 1-D integer tensor, got shape {tuple(tokens.shape)}")
        if phones.ndim != 1 or phones.numel() == 0 or phones.is_floating_point():
            raise SpecdecError(f"phones must be a non-empty 1-D integer tensor, got shape {tuple(phones.shape)}")
        if int(tokens.min()) < 0 or int(tokens.max()) >= CODEBOOK_SIZE:
            bad = int(tokens.max()) if int(tokens.max()) >= CODEBOOK_SIZE else int(tokens.min())
            raise SpecdecError(f"semantic token {bad} is outside the codebook [0, {CODEBOOK_SIZE}) "
                               "(EOS 1024 must be stripped before decoding)")
        n_sym = self.cfg.n_symbols
        if int(phones.min()) < 0 or int(phones.max()) >= n_sym:
            bad = int(phones.max()) if int(phones.max()) >= n_sym else int(phones.min())
            raise SpecdecError(f"phone id {bad} is outside the SoVITS {self.cfg.symbol_version} symbol table "
                               f"({n_sym} symbols): the text front-end or GPT uses another symbol set")
        return tokens.long(), phones.long()
