"""SoVITS decode path (GPT-SoVITS v1, v2, v2Pro, v2ProPlus): semantic tokens + target phones + reference style → 32 kHz.

    tokens [T] ─codebook─> [768, T] ─nearest ×2─> [768, 2T] ─TextEncoder(+phones, MRTE with ge)─> m, logs [192, 2T]
    z_p = m + noise·exp(logs)·noise_scale ─flow⁻¹(ge)─> z ─HiFi-GAN(ge)─> wav [2T·640] = 1280 samples per token

ge (the global style) = MelStyleEncoder(linear reference spectrogram, first 704 bins; all 1025 for v1), and for
v2Pro/ProPlus PReLU(ge + Linear(ERes2NetV2 speaker embedding)). The MRTE sees ge (v1/v2) or ge_to512(ge) (Pro).

Clean-room re-implementation of upstream `module/models.py` `SynthesizerTrn.decode` (facts in gpt-sovits.md §3-4).
Parameter names follow upstream so its state dicts load after weight norm is folded (`sovits_checkpoint.py`); the
training-only posterior encoder `enc_q` does not exist here. Sequences are unpadded (batch 1), so upstream's masks,
all ones at inference, are left out.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from specdec.errors import SpecdecError

VERSIONS = ("v1", "v2", "v2Pro", "v2ProPlus")
N_SYMBOLS = {"v1": 322, "v2": 732}  # SoVITS text_embedding rows per symbol set (gpt-sovits.md §5.1)
GPT_PHONEME_VOCAB = {"v1": 512, "v2": 732}  # the matching GPT `phoneme_vocab_size`
SSL_DIM = 768  # HuBERT feature width = codebook width
CODEBOOK_SIZE = 1024
STYLE_BINS_V2 = 704  # v2+ style encoder reads spectrogram bins [0, 704) (≈ 0-11 kHz)
SV_DIM = 20480  # ERes2NetV2 forward3 embedding (2048 channels × 10 freq bins)
LRELU_SLOPE = 0.1


@dataclass(frozen=True)
class SoVITSConfig:
    version: str = "v2"  # v1 | v2 | v2Pro | v2ProPlus
    inter_channels: int = 192
    hidden_channels: int = 192
    filter_channels: int = 768
    n_heads: int = 2
    n_layers: int = 6
    kernel_size: int = 3
    resblock_kernel_sizes: tuple = (3, 7, 11)
    resblock_dilation_sizes: tuple = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    upsample_rates: tuple = (10, 8, 2, 2, 2)
    upsample_initial_channel: int = 512
    upsample_kernel_sizes: tuple = (16, 16, 8, 2, 2)
    gin_channels: int = 512
    sampling_rate: int = 32000
    filter_length: int = 2048
    hop_length: int = 640
    win_length: int = 2048
    flow_layers: int = 4  # WN layers per coupling (hard-coded upstream)
    flow_kernel_size: int = 5
    n_flows: int = 4

    def __post_init__(self):
        if self.version not in VERSIONS:
            raise SpecdecError(f"SoVITS version {self.version!r} is not one of {', '.join(VERSIONS)}")
        if math.prod(self.upsample_rates) != self.hop_length:
            raise SpecdecError(f"SoVITS config: upsample_rates {list(self.upsample_rates)} multiply to "
                               f"{math.prod(self.upsample_rates)}, not hop_length {self.hop_length}")

    @property
    def is_pro(self) -> bool:
        return self.version in ("v2Pro", "v2ProPlus")

    @property
    def symbol_version(self) -> str:
        return "v1" if self.version == "v1" else "v2"

    @property
    def n_symbols(self) -> int:
        return N_SYMBOLS[self.symbol_version]

    @property
    def style_bins(self) -> int:
        return self.filter_length // 2 + 1 if self.version == "v1" else STYLE_BINS_V2

    @property
    def samples_per_token(self) -> int:
        return 2 * self.hop_length  # 25 Hz tokens → 50 Hz latent frames → hop samples each

    def to_dict(self) -> dict:
        return {k: (_as_lists(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "SoVITSConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: (_as_tuples(v) if isinstance(v, list) else v) for k, v in d.items() if k in names})


def _as_lists(v):
    return [_as_lists(x) for x in v] if isinstance(v, (tuple, list)) else v


def _as_tuples(v):
    return tuple(_as_tuples(x) for x in v) if isinstance(v, (tuple, list)) else v


def check_symbol_set(cfg: SoVITSConfig, gpt_phoneme_vocab_size: int, where: str = "") -> None:
    """GPT and SoVITS must share one symbol table: v1 (322 symbols, GPT vocab 512) or v2 (732, GPT vocab 732)."""
    if gpt_phoneme_vocab_size != GPT_PHONEME_VOCAB[cfg.symbol_version]:
        gpt_set = {v: k for k, v in GPT_PHONEME_VOCAB.items()}.get(gpt_phoneme_vocab_size, "unknown")
        raise SpecdecError(f"{where}symbol-set mismatch: the GPT has a {gpt_set} phoneme vocabulary "
                           f"({gpt_phoneme_vocab_size}) but the SoVITS model ({cfg.version}) uses the "
                           f"{cfg.symbol_version} symbols ({cfg.n_symbols}); use checkpoints of one version")


# ---- TextEncoder pieces (upstream module/attentions.py, mrte_model.py) ------------------------------------
class LayerNorm(nn.Module):
    """LayerNorm over the channel dim of [B, C, T] (upstream keys gamma/beta, eps 1e-5)."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x):  # [B, C, T]
        return F.layer_norm(x.transpose(1, 2), self.gamma.shape, self.gamma, self.beta, 1e-5).transpose(1, 2)


class RelPosSelfAttention(nn.Module):
    """VITS self-attention with relative positions: logits q·k/√d + q·E_k[j-i]/√d, output Σ p·v + Σ p·E_v[j-i],
    where E_k, E_v (shared by all heads) cover offsets |j-i| ≤ window and farther offsets add nothing."""

    def __init__(self, channels: int, n_heads: int, window: int = 4):
        super().__init__()
        self.n_heads, self.window = n_heads, window
        self.d = channels // n_heads
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, channels, 1)
        self.emb_rel_k = nn.Parameter(torch.zeros(1, 2 * window + 1, self.d))
        self.emb_rel_v = nn.Parameter(torch.zeros(1, 2 * window + 1, self.d))

    def forward(self, x):  # [B, C, T]
        B, C, T = x.shape
        H, d, w = self.n_heads, self.d, self.window
        q = self.conv_q(x).view(B, H, d, T).transpose(2, 3) / math.sqrt(d)  # [B, H, T, d]
        k = self.conv_k(x).view(B, H, d, T)  # [B, H, d, T]
        v = self.conv_v(x).view(B, H, d, T).transpose(2, 3)  # [B, H, T, d]
        offset, inside = _relative_offsets(T, w, x.device)  # [T, T] (j - i + w), |j - i| ≤ w
        rel = q @ self.emb_rel_k[0].t()  # [B, H, T, 2w+1]: logit of query i for each offset
        scores = q @ k + torch.where(inside, rel.gather(-1, offset.expand(B, H, T, T)), 0.0)
        p = scores.softmax(-1)  # [B, H, T, T]
        cols, valid = _band_columns(T, w, x.device)  # [T, 2w+1] key index i + r - w
        band = torch.where(valid, p.gather(-1, cols.expand(B, H, T, 2 * w + 1)), 0.0)  # [B, H, T, 2w+1]
        out = p @ v + band @ self.emb_rel_v[0]  # [B, H, T, d]
        return self.conv_o(out.transpose(2, 3).reshape(B, C, T))


def _relative_offsets(T: int, w: int, device):
    r = torch.arange(T, device=device)
    rel = r[None, :] - r[:, None]  # [T, T] j - i
    return (rel.clamp(-w, w) + w), rel.abs() <= w


def _band_columns(T: int, w: int, device):
    cols = torch.arange(T, device=device)[:, None] + torch.arange(-w, w + 1, device=device)[None, :]  # [T, 2w+1]
    valid = (cols >= 0) & (cols < T)
    return cols.clamp(0, T - 1), valid


class FFN(nn.Module):
    def __init__(self, channels: int, filter_channels: int, kernel_size: int):
        super().__init__()
        self.conv_1 = nn.Conv1d(channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, channels, kernel_size)
        self.pad = ((kernel_size - 1) // 2, kernel_size // 2)

    def forward(self, x):  # [B, C, T]
        x = torch.relu(self.conv_1(F.pad(x, self.pad)))
        return self.conv_2(F.pad(x, self.pad))


class Encoder(nn.Module):
    """Post-norm transformer: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, channels: int, filter_channels: int, n_heads: int, n_layers: int, kernel_size: int):
        super().__init__()
        self.attn_layers = nn.ModuleList(RelPosSelfAttention(channels, n_heads) for _ in range(n_layers))
        self.norm_layers_1 = nn.ModuleList(LayerNorm(channels) for _ in range(n_layers))
        self.ffn_layers = nn.ModuleList(FFN(channels, filter_channels, kernel_size) for _ in range(n_layers))
        self.norm_layers_2 = nn.ModuleList(LayerNorm(channels) for _ in range(n_layers))

    def forward(self, x):  # [B, C, T]
        for attn, n1, ffn, n2 in zip(self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2):
            x = n1(x + attn(x))
            x = n2(x + ffn(x))
        return x


class CrossAttention(nn.Module):
    """Plain multi-head attention (no relative positions): queries from x, keys/values from c."""

    def __init__(self, channels: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, channels, 1)

    def forward(self, x, c):  # [B, C, Tx], [B, C, Tc]
        B, C, T = x.shape
        H = self.n_heads

        def heads(t):  # [B, C, L] -> [B, H, L, d]
            return t.view(B, H, C // H, t.shape[-1]).transpose(2, 3)

        out = F.scaled_dot_product_attention(heads(self.conv_q(x)), heads(self.conv_k(c)), heads(self.conv_v(c)))
        return self.conv_o(out.transpose(2, 3).reshape(B, C, T))


class MRTE(nn.Module):
    """Multi-reference timbre encoder: the SSL stream attends to the text, then adds the global style."""

    def __init__(self, channels: int = 192, hidden: int = 512, n_heads: int = 4):
        super().__init__()
        self.cross_attention = CrossAttention(hidden, n_heads)
        self.c_pre = nn.Conv1d(channels, hidden, 1)
        self.text_pre = nn.Conv1d(channels, hidden, 1)
        self.c_post = nn.Conv1d(hidden, channels, 1)

    def forward(self, y, text, ge):  # [B, 192, Ty], [B, 192, Tt], [B, 512, 1]
        y = self.c_pre(y)
        return self.c_post(self.cross_attention(y, self.text_pre(text)) + y + ge)


class TextEncoder(nn.Module):
    def __init__(self, cfg: SoVITSConfig):
        super().__init__()
        h, f, nh, nl, k = cfg.hidden_channels, cfg.filter_channels, cfg.n_heads, cfg.n_layers, cfg.kernel_size
        self.ssl_proj = nn.Conv1d(SSL_DIM, h, 1)
        self.encoder_ssl = Encoder(h, f, nh, nl // 2, k)
        self.text_embedding = nn.Embedding(cfg.n_symbols, h)
        self.encoder_text = Encoder(h, f, nh, nl, k)
        self.mrte = MRTE(h)
        self.encoder2 = Encoder(h, f, nh, nl // 2, k)
        self.proj = nn.Conv1d(h, 2 * cfg.inter_channels, 1)

    def forward(self, ssl, phones, ge_text, speed: float = 1.0):  # [1, 768, L], [1, N], [1, 512, 1]
        y = self.encoder_ssl(self.ssl_proj(ssl))  # [1, 192, L]
        text = self.encoder_text(self.text_embedding(phones).transpose(1, 2))  # [1, 192, N]
        y = self.encoder2(self.mrte(y, text, ge_text))
        if speed != 1.0:
            y = F.interpolate(y, size=int(y.shape[-1] / speed) + 1, mode="linear")
        m, logs = self.proj(y).chunk(2, dim=1)  # [1, 192, L'] each
        return m, logs


# ---- flow (upstream ResidualCouplingBlock, mean-only couplings, run in reverse) ---------------------------
class WN(nn.Module):
    """WaveNet-style stack: gated tanh·sigmoid of dilated conv + global condition, residual and skip outputs."""

    def __init__(self, channels: int, kernel_size: int, n_layers: int, gin_channels: int):
        super().__init__()
        self.channels = channels
        self.cond_layer = nn.Conv1d(gin_channels, 2 * channels * n_layers, 1)
        self.in_layers = nn.ModuleList(
            nn.Conv1d(channels, 2 * channels, kernel_size, padding=kernel_size // 2) for _ in range(n_layers))
        self.res_skip_layers = nn.ModuleList(
            nn.Conv1d(channels, 2 * channels if i < n_layers - 1 else channels, 1) for i in range(n_layers))

    def forward(self, x, g):  # [B, C, T], [B, gin, 1]
        C = self.channels
        g = self.cond_layer(g)  # [B, 2C·n_layers, 1]
        out = torch.zeros_like(x)
        last = len(self.in_layers) - 1
        for i, (conv, res_skip) in enumerate(zip(self.in_layers, self.res_skip_layers)):
            a = conv(x) + g[:, 2 * C * i: 2 * C * (i + 1)]
            rs = res_skip(torch.tanh(a[:, :C]) * torch.sigmoid(a[:, C:]))
            if i < last:
                x = x + rs[:, :C]
                out = out + rs[:, C:]
            else:
                out = out + rs
        return out


class Coupling(nn.Module):
    """Mean-only affine coupling: x1 ← x1 - post(WN(pre(x0))) in reverse."""

    def __init__(self, cfg: SoVITSConfig):
        super().__init__()
        half = cfg.inter_channels // 2
        self.pre = nn.Conv1d(half, cfg.hidden_channels, 1)
        self.enc = WN(cfg.hidden_channels, cfg.flow_kernel_size, cfg.flow_layers, cfg.gin_channels)
        self.post = nn.Conv1d(cfg.hidden_channels, half, 1)

    def reverse(self, x, g):  # [B, C, T]
        x0, x1 = x.chunk(2, dim=1)
        return torch.cat([x0, x1 - self.post(self.enc(self.pre(x0), g))], dim=1)


class Flip(nn.Module):
    def reverse(self, x, g):
        return x.flip(1)


class Flow(nn.Module):
    def __init__(self, cfg: SoVITSConfig):
        super().__init__()
        self.flows = nn.ModuleList()
        for _ in range(cfg.n_flows):  # keys flows.0, flows.2, ...: the Flips in between have no parameters
            self.flows.append(Coupling(cfg))
            self.flows.append(Flip())

    def reverse(self, z, g):  # [B, 192, T]
        for f in reversed(self.flows):
            z = f.reverse(z, g)
        return z


# ---- HiFi-GAN generator ------------------------------------------------------------------------------------
class ResBlock1(nn.Module):
    def __init__(self, channels: int, kernel_size: int, dilations: tuple):
        super().__init__()
        self.convs1 = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size, dilation=d,
                                              padding=d * (kernel_size - 1) // 2) for d in dilations)
        self.convs2 = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2)
                                    for _ in dilations)

    def forward(self, x):  # [B, C, T]
        for c1, c2 in zip(self.convs1, self.convs2):  # in place only on fresh conv outputs, never on x
            x = c2(F.leaky_relu_(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE)).add_(x)
        return x


class Generator(nn.Module):
    def __init__(self, cfg: SoVITSConfig):
        super().__init__()
        ch = cfg.upsample_initial_channel
        self.conv_pre = nn.Conv1d(cfg.inter_channels, ch, 7, padding=3)
        self.cond = nn.Conv1d(cfg.gin_channels, ch, 1)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            self.ups.append(nn.ConvTranspose1d(ch >> i, ch >> (i + 1), k, u, padding=(k - u) // 2))
            for rk, rd in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes):
                self.resblocks.append(ResBlock1(ch >> (i + 1), rk, rd))
        self.conv_post = nn.Conv1d(ch >> len(cfg.upsample_rates), 1, 7, padding=3, bias=False)
        self.n_kernels = len(cfg.resblock_kernel_sizes)

    def forward(self, z, g):  # [B, 192, T], [B, gin, 1] -> [B, 1, T·hop]
        x = self.conv_pre(z).add_(self.cond(g))
        n = self.n_kernels
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu_(x, LRELU_SLOPE))  # x is dead after this: activate in place
            blocks = self.resblocks[i * n:(i + 1) * n]
            xs = blocks[0](x)
            for block in blocks[1:]:
                xs.add_(block(x))
            x = xs.div_(n)
        return torch.tanh_(self.conv_post(F.leaky_relu_(x)))  # last slope is the default 0.01 (upstream quirk)


def generator_radius(cfg: SoVITSConfig) -> int:
    """How many latent frames on each side of a frame the generator's output samples depend on (conservative).
    Decoding a crop with this margin gives the same samples as decoding the whole latent."""
    r, rate = 3.0, 1  # conv_pre k=7
    for u, k in zip(cfg.upsample_rates, cfg.upsample_kernel_sizes):
        r += math.ceil(k / u) / rate  # transposed conv: ≤ ceil(k/u) input steps either side
        rate *= u
        r += max(sum(d * (rk - 1) // 2 + (rk - 1) // 2 for d in rd)
                 for rk, rd in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)) / rate
    r += 3 / rate  # conv_post k=7
    return math.ceil(r) + 1


def flow_radius(cfg: SoVITSConfig) -> int:
    """Latent frames on each side that one flow output frame depends on (each WN layer: (k-1)/2, dilation 1)."""
    return cfg.n_flows * cfg.flow_layers * (cfg.flow_kernel_size // 2)


# ---- style (MelStyleEncoder) ---------------------------------------------------------------------------------
class StyleAttention(nn.Module):
    """MelStyleEncoder self-attention: 2 heads, softmax temperature √d_model (not √d_head), residual."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.scale = n_heads, 1.0 / math.sqrt(d_model)
        self.w_qs = nn.Linear(d_model, d_model)
        self.w_ks = nn.Linear(d_model, d_model)
        self.w_vs = nn.Linear(d_model, d_model)
        self.fc = nn.Linear(d_model, d_model)

    def forward(self, x):  # [B, T, D]
        B, T, D = x.shape
        H = self.n_heads

        def heads(t):
            return t.view(B, T, H, D // H).transpose(1, 2)  # [B, H, T, d]

        out = F.scaled_dot_product_attention(heads(self.w_qs(x)), heads(self.w_ks(x)), heads(self.w_vs(x)),
                                             scale=self.scale)
        return x + self.fc(out.transpose(1, 2).reshape(B, T, D))


class MelStyleEncoder(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden: int = 128, kernel_size: int = 5, n_heads: int = 2):
        super().__init__()
        self.spectral_in = nn.Linear(in_dim, hidden)
        self.spectral_out = nn.Linear(hidden, hidden)
        self.temporal = nn.ModuleList(nn.Conv1d(hidden, 2 * hidden, kernel_size, padding=kernel_size // 2)
                                      for _ in range(2))
        self.slf_attn = StyleAttention(hidden, n_heads)
        self.fc = nn.Linear(hidden, out_dim)

    def forward(self, spec):  # [B, in_dim, T] linear magnitude -> [B, out_dim, 1]
        x = F.mish(self.spectral_out(F.mish(self.spectral_in(spec.transpose(1, 2)))))  # [B, T, 128]
        x = x.transpose(1, 2)
        for conv in self.temporal:  # gated linear units with residual
            a, b = conv(x).chunk(2, dim=1)
            x = x + a * torch.sigmoid(b)
        x = self.fc(self.slf_attn(x.transpose(1, 2)))  # [B, T, out]
        return x.mean(1).unsqueeze(-1)


# ---- the model -----------------------------------------------------------------------------------------------
@dataclass
class Style:
    """What a reference contributes to decoding: ge drives flow and generator, ge_text the MRTE."""
    ge: torch.Tensor  # [1, gin, 1]
    ge_text: torch.Tensor  # [1, 512, 1]


class SoVITS(nn.Module):
    def __init__(self, cfg: SoVITSConfig):
        super().__init__()
        self.cfg = cfg
        self.ssl_proj = nn.Conv1d(SSL_DIM, SSL_DIM, 2, stride=2)  # 50 Hz HuBERT → 25 Hz (prompt tokens)
        self.register_buffer("codebook", torch.zeros(CODEBOOK_SIZE, SSL_DIM))
        self.enc_p = TextEncoder(cfg)
        self.flow = Flow(cfg)
        self.dec = Generator(cfg)
        self.ref_enc = MelStyleEncoder(cfg.style_bins, cfg.gin_channels)
        if cfg.is_pro:
            self.sv_emb = nn.Linear(SV_DIM, cfg.gin_channels)
            self.ge_to512 = nn.Linear(cfg.gin_channels, 512)
            self.prelu = nn.PReLU(cfg.gin_channels)

    # -- reference → style
    def style(self, refer_specs: list[torch.Tensor], sv_embs: list[torch.Tensor] | None = None) -> Style:
        """refer_specs: linear spectrograms [1025, Tspec] (one per reference); sv_embs: [20480] each (Pro only).
        Several references are averaged (upstream aux refs)."""
        ges = []
        for i, spec in enumerate(refer_specs):
            ge = self.ref_enc(spec[None, :self.cfg.style_bins].to(self.codebook.dtype))  # [1, gin, 1]
            if self.cfg.is_pro:
                ge = self.prelu(ge + self.sv_emb(sv_embs[i].to(ge.dtype))[None, :, None])
            ges.append(ge)
        ge = torch.stack(ges).mean(0)
        ge_text = self.ge_to512(ge.transpose(1, 2)).transpose(1, 2) if self.cfg.is_pro else ge
        return Style(ge, ge_text)

    # -- tokens + phones → latent statistics
    def encode(self, tokens: torch.Tensor, phones: torch.Tensor, style: Style, speed: float = 1.0):
        """tokens [T] long (25 Hz), phones [N] long → m, logs [1, 192, L] with L = 2T (speed 1)."""
        q = F.embedding(tokens, self.codebook).t()[None]  # [1, 768, T]
        q = q.repeat_interleave(2, dim=2)  # nearest ×2 → 50 Hz
        return self.enc_p(q, phones[None], style.ge_text, speed)

    def synthesize(self, z_p, style: Style):  # [1, 192, L] -> [1, L·hop]
        return self.dec(self.flow.reverse(z_p, style.ge), style.ge)[:, 0]

    # -- HuBERT features → prompt tokens (nearest codebook entry)
    def extract_tokens(self, ssl: torch.Tensor) -> torch.Tensor:
        """ssl [768, T50] HuBERT last_hidden_state (transposed) → tokens [T25] long."""
        x = self.ssl_proj(ssl[None].to(self.codebook.dtype))[0].t()  # [T25, 768]
        e = self.codebook
        # argmax of -(|x|² - 2x·e + |e|²), the upstream distance, spelled as argmin of the same sum
        d = x.pow(2).sum(1, keepdim=True) - 2 * x @ e.t() + e.pow(2).sum(1)[None]
        return d.argmin(1)
