"""The demo voice's "fast mode" decoder: semantic tokens (25 Hz) → log-mel (100 Hz) → Griffin-Lim → 16 kHz audio.

    decoder = FastDecoder.from_file("models/demo/decoder.safetensors")
    wav = decoder.decode(tokens, phones, voice)          # float32 [T · 640] at 16 kHz

Token → mel is a small convolutional network (ConvNeXt-style 1-D blocks, no attention), so every output frame
depends on a fixed number of neighbouring tokens (`token_radius`). The network predicts the mel *normalised per
speaker*; the voice supplies the de-normalisation, the per-bin mean and std of its reference clip's log-mel
(`voice.ref_mel_stats` [2, 80], from `reference_stats`), which also conditions the network. The speaker thus comes
from the reference clip, not from a table of training speakers.

The phase is recovered by fast Griffin-Lim (momentum 0.99, Perraudin et al. 2013), started from a pseudo-random
phase that is a pure function of the absolute frame index. `decode_window` renders tokens[start:end] from the mel of
the window plus `gl_margin` tokens each side (the mel itself is exact: the network runs on the window plus its
receptive field), so a chunk differs from the one-shot decode only by Griffin-Lim's phase near the chunk edges;
`tests/test_fast_decoder.py` measures that.

With `phone_vocab` > 0 the tokens also cross-attend to the segment's phones (as SoVITS's text encoder does), meant
for units too coarse to spell the words alone (the demo's 128 k-means units: a per-token mean mel is unintelligible).
Measured on the demo corpus (2026-11-26, 1800 steps each) it did not help yet: held-out WER 41.7% with phones vs
36.0% without, so the shipped decoder has phone_vocab 0; the attention likely needs a longer run to align.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from specdec.errors import SpecdecError

SAMPLE_RATE = 16000
N_FFT, HOP, N_MELS = 1024, 160, 80
FRAMES_PER_TOKEN = 4  # 25 Hz tokens, 100 Hz mel frames
LOG_FLOOR = 1e-5
PHASE_BLOCK = 64  # frames per independently seeded block of initial phase


@dataclass
class FastDecoderConfig:
    vocab_size: int = 512
    dim: int = 256
    token_layers: int = 8  # ConvNeXt blocks at 25 Hz
    frame_layers: int = 2  # ConvNeXt blocks at 100 Hz
    kernel: int = 5
    phone_vocab: int = 0  # size of the phone symbol table read by cross-attention (0: the phones are not used)
    phone_layers: int = 3  # ConvBlocks over the phone embeddings
    heads: int = 4
    gl_iters: int = 32
    gl_margin: int = 4  # tokens of extra context each side for Griffin-Lim in decode_window


# ---- features -------------------------------------------------------------------------------------------------
def mel_basis(n_mels: int = N_MELS, n_fft: int = N_FFT, sr: int = SAMPLE_RATE) -> torch.Tensor:
    """[n_mels, n_fft//2+1] triangular filters on the HTK mel scale, 0 to sr/2, each of unit area (Slaney norm)."""
    def mel(f):
        return 2595.0 * math.log10(1.0 + f / 700.0)
    edges = torch.linspace(mel(0.0), mel(sr / 2), n_mels + 2, dtype=torch.float64)
    hz = 700.0 * (10.0 ** (edges / 2595.0) - 1.0)  # [n_mels + 2]
    freqs = torch.linspace(0, sr / 2, n_fft // 2 + 1, dtype=torch.float64)
    lo, mid, hi = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    tri = torch.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)).clamp(min=0)
    return (tri * (2.0 / (hi - lo))).float()


def log_mel(wav: torch.Tensor) -> torch.Tensor:
    """float [N] at 16 kHz → [n_frames, 80] natural-log mel magnitude; frame i is centred on sample i·160."""
    spec = torch.stft(wav.float(), N_FFT, HOP, window=torch.hann_window(N_FFT), center=True, return_complex=True)
    return torch.log(torch.clamp(mel_basis() @ spec.abs(), min=LOG_FLOOR)).t()


def token_mel(wav: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """float [N] at 16 kHz → log-mel [4·n_tokens, 80]: the frames of n_tokens tokens, cut or edge-padded (a clip's
    token count rounds up past its last mel frame)."""
    mel = log_mel(wav)
    n = FRAMES_PER_TOKEN * n_tokens
    return torch.cat([mel, mel[-1:].expand(max(0, n - len(mel)), -1)])[:n]


def reference_stats(wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """A reference clip → [2, 80]: per-bin mean and std of its log-mel (the voice's `ref_mel_stats`)."""
    if sample_rate != SAMPLE_RATE:
        from specdec.models.audio import resample
        wav = resample(wav, sample_rate, SAMPLE_RATE)
    mel = log_mel(wav)
    return torch.stack([mel.mean(0), mel.std(0).clamp(min=1e-3)])


# ---- network --------------------------------------------------------------------------------------------------
class ConvBlock(nn.Module):
    """Depthwise conv (local context) → LayerNorm → pointwise MLP, residual."""

    def __init__(self, dim: int, kernel: int):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, C]
        h = self.dwconv(x.transpose(1, 2)).transpose(1, 2)
        return x + self.fc2(F.gelu(self.fc1(self.norm(h))))


class CrossAttention(nn.Module):
    """Tokens attend to every phone of the segment (pre-norm, residual): the phones say what is being said, the
    tokens when and how. The phones are all known before the first token, so windows stay exact."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, T, C], memory [B, N, C], mask [B, N] (True = a real phone) → [B, T, C]."""
        B, T, C = x.shape
        H = self.heads
        q = self.q(self.norm(x)).view(B, T, H, C // H).transpose(1, 2)  # [B, H, T, D]
        k, v = self.kv(memory).view(B, -1, 2, H, C // H).permute(2, 0, 3, 1, 4)  # [B, H, N, D] each
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return x + self.proj(out.transpose(1, 2).reshape(B, T, C))


class TokenToMel(nn.Module):
    def __init__(self, cfg: FastDecoderConfig):
        super().__init__()
        self.cfg = cfg
        C = cfg.dim
        self.embed = nn.Embedding(cfg.vocab_size, C)
        self.speaker = nn.Linear(2 * N_MELS, C)
        self.token_blocks = nn.ModuleList(ConvBlock(C, cfg.kernel) for _ in range(cfg.token_layers))
        if cfg.phone_vocab:
            self.phone_embed = nn.Embedding(cfg.phone_vocab, C)
            self.phone_blocks = nn.ModuleList(ConvBlock(C, cfg.kernel) for _ in range(cfg.phone_layers))
            self.phone_norm = nn.LayerNorm(C)
            self.cross = CrossAttention(C, cfg.heads)
        self.upsample = nn.Linear(C, FRAMES_PER_TOKEN * C)
        self.frame_blocks = nn.ModuleList(ConvBlock(C, cfg.kernel) for _ in range(cfg.frame_layers))
        self.norm = nn.LayerNorm(C)
        self.out = nn.Linear(C, N_MELS)

    def forward(self, tokens: torch.Tensor, ref_stats: torch.Tensor, phones: torch.Tensor | None = None,
                phone_mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, T], ref_stats [B, 2, 80], phones [B, N] with phone_mask [B, N] (True = real, not padding)
        → log-mel [B, 4T, 80]."""
        B, T = tokens.shape
        mean, std = ref_stats[:, :1], ref_stats[:, 1:]  # [B, 1, 80]
        x = self.embed(tokens) + self.speaker(torch.cat([mean, std.log()], -1))  # [B, T, C]
        if self.cfg.phone_vocab:
            memory = self.phone_embed(phones)  # [B, N, C]
            for block in self.phone_blocks:
                memory = block(memory)
            memory = self.phone_norm(memory)
        for i, block in enumerate(self.token_blocks):
            if self.cfg.phone_vocab and i == len(self.token_blocks) // 2:
                x = self.cross(x, memory, phone_mask)
            x = block(x)
        x = self.upsample(x).view(B, T * FRAMES_PER_TOKEN, -1)  # [B, 4T, C]
        for block in self.frame_blocks:
            x = block(x)
        return self.out(self.norm(x)) * std + mean  # normalised mel, de-normalised by the reference's statistics


def token_radius(cfg: FastDecoderConfig) -> int:
    """Tokens each side that can influence a frame (the network's receptive field, rounded up)."""
    frame_radius = cfg.frame_layers * (cfg.kernel // 2)
    return cfg.token_layers * (cfg.kernel // 2) + math.ceil(frame_radius / FRAMES_PER_TOKEN)


# ---- phase reconstruction -------------------------------------------------------------------------------------
def _initial_phase(first: int, n: int, n_bins: int) -> torch.Tensor:
    """[n_bins, n] uniform phases for frames first..first+n, a pure function of the frame index."""
    blocks = []
    for b in range(first // PHASE_BLOCK, (first + n - 1) // PHASE_BLOCK + 1):
        g = torch.Generator().manual_seed(b)
        blocks.append(torch.rand(PHASE_BLOCK, n_bins, generator=g))
    return (2 * math.pi * torch.cat(blocks)[first % PHASE_BLOCK:first % PHASE_BLOCK + n]).t()


def griffin_lim(mag: torch.Tensor, n_iter: int, first_frame: int = 0, momentum: float = 0.99) -> torch.Tensor:
    """Linear magnitude [513, n] → waveform [n · 160] (fast Griffin-Lim)."""
    window = torch.hann_window(N_FFT)
    length = mag.shape[1] * HOP
    angles = torch.polar(torch.ones_like(mag), _initial_phase(first_frame, mag.shape[1], mag.shape[0]))
    previous = torch.zeros_like(angles)
    for _ in range(n_iter):
        wav = torch.istft(mag * angles, N_FFT, HOP, window=window, center=True, length=length)
        rebuilt = torch.stft(wav, N_FFT, HOP, window=window, center=True, return_complex=True)[:, :mag.shape[1]]
        # z / |z| in one op (0 where z is 0): the complex abs, clamp and divide took ~20% of a decode
        angles = torch.sgn(rebuilt.sub(previous, alpha=momentum / (1 + momentum)))
        previous = rebuilt
    return torch.istft(mag * angles, N_FFT, HOP, window=window, center=True, length=length)


class MelInverse:
    """log-mel [n, 80] → linear magnitude [513, n]: the least-squares inverse of the filterbank, clipped at 0."""

    def __init__(self):
        self.pinv = torch.linalg.pinv(mel_basis())  # [513, 80]

    def __call__(self, mel: torch.Tensor) -> torch.Tensor:
        return (self.pinv @ mel.exp().t()).clamp(min=0.0)


# ---- the decoder ----------------------------------------------------------------------------------------------
class FastDecoder:
    """specdec.models.decoder.Decoder over TokenToMel + Griffin-Lim."""
    sample_rate = SAMPLE_RATE
    samples_per_token = FRAMES_PER_TOKEN * HOP

    def __init__(self, net: TokenToMel):
        self.net = net.eval()
        self.cfg = net.cfg
        self.inverse = MelInverse()

    @classmethod
    def from_file(cls, path: str) -> "FastDecoder":
        return cls(load_fast_decoder(path))

    def mel(self, tokens: torch.Tensor, phones: torch.Tensor, voice, start: int, end: int) -> torch.Tensor:
        """log-mel [4(end-start), 80] of tokens[start:end], exactly as a decode of all `tokens` computes it."""
        r = token_radius(self.cfg)
        lo, hi = max(0, start - r), min(len(tokens), end + r)
        phones = self._check_phones(phones)
        with torch.inference_mode():
            mel = self.net(tokens[None, lo:hi], self._stats(voice)[None], phones[None],
                           torch.ones(1, len(phones), dtype=torch.bool))[0]
        return mel[(start - lo) * FRAMES_PER_TOKEN:(end - lo) * FRAMES_PER_TOKEN]

    def decode(self, tokens: torch.Tensor, phones: torch.Tensor, voice) -> torch.Tensor:
        tokens = self._check(tokens)
        return self.decode_window(tokens, phones, voice, 0, len(tokens))

    def decode_window(self, tokens: torch.Tensor, phones: torch.Tensor, voice, start: int, end: int) -> torch.Tensor:
        """float32 [(end-start) · 640]: tokens[start:end] rendered with `gl_margin` tokens of phase context."""
        tokens = self._check(tokens)
        if not 0 <= start < end <= len(tokens):
            raise SpecdecError(f"decode window [{start}, {end}) is not inside the {len(tokens)} tokens given")
        m = self.cfg.gl_margin
        lo, hi = max(0, start - m), min(len(tokens), end + m)
        with torch.inference_mode():
            mag = self.inverse(self.mel(tokens, phones, voice, lo, hi))
            wav = griffin_lim(mag, self.cfg.gl_iters, first_frame=lo * FRAMES_PER_TOKEN)
        spt = self.samples_per_token
        return wav[(start - lo) * spt:(end - lo) * spt].float()

    def _stats(self, voice) -> torch.Tensor:
        stats = getattr(voice, "ref_mel_stats", None)
        if not isinstance(stats, torch.Tensor) or stats.shape != (2, N_MELS):
            got = tuple(stats.shape) if isinstance(stats, torch.Tensor) else type(stats).__name__
            raise SpecdecError(f"the fast decoder needs voice.ref_mel_stats [2, {N_MELS}] (log-mel mean and std of "
                               f"the reference clip, from fast_decoder.reference_stats), got {got}")
        return stats.float()

    def _check_phones(self, phones: torch.Tensor) -> torch.Tensor:
        phones = torch.as_tensor(phones)
        if phones.ndim != 1 or phones.numel() == 0 or phones.is_floating_point():
            raise SpecdecError(f"phones must be a non-empty 1-D integer tensor, got shape {tuple(phones.shape)}")
        n = self.cfg.phone_vocab
        if n and (int(phones.min()) < 0 or int(phones.max()) >= n):
            raise SpecdecError(f"phone id {int(phones.max())} is outside the fast decoder's symbol table ({n} "
                               "symbols): the text front-end uses another symbol set")
        return phones.long()

    def _check(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = torch.as_tensor(tokens)
        if tokens.ndim != 1 or tokens.numel() == 0 or tokens.is_floating_point():
            raise SpecdecError(f"tokens must be a non-empty 1-D integer tensor, got shape {tuple(tokens.shape)}")
        if int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.vocab_size:
            raise SpecdecError(f"semantic token {int(tokens.max())} is outside the fast decoder's codebook "
                               f"[0, {self.cfg.vocab_size}) (strip EOS before decoding)")
        return tokens.long()


# ---- weights --------------------------------------------------------------------------------------------------
FORMAT_TAG = "specdec-fast-decoder"


def save_fast_decoder(net: TokenToMel, path: str, dtype: torch.dtype = torch.float16) -> None:
    from specdec.models import weights
    weights.write(path, net.state_dict(), FORMAT_TAG, asdict(net.cfg), dtype=dtype)


def load_fast_decoder(path: str) -> TokenToMel:
    """Weights are stored in fp16 (the shipped file) or fp32 and run in fp32."""
    from specdec.models import weights
    state, config, _ = weights.read(path, FORMAT_TAG, "fast-decoder")
    try:
        cfg = FastDecoderConfig(**config)
    except TypeError as e:
        raise SpecdecError(f"{path}: fast-decoder config does not fit this version ({e})") from None
    return weights.load_state(path, TokenToMel(cfg), state, torch.float32, "fast-decoder")
