"""The GPT-SoVITS text-to-semantic GPT (upstream `Text2SemanticDecoder`), one class for every size.

Inference-time numerics follow upstream exactly: post-norm blocks with ReLU, fused q/k/v `in_proj` (rows ordered
q, k, v), two sinusoidal position tables with learned scales (text and audio positions both start at 0), a BERT
projection added to the phone embeddings, a prefix-LM mask (text bidirectional, audio causal) and a bias-free
1025-way head whose last row is EOS.

The model never owns a KV cache: `forward` reads and writes the pages it is handed through `AttentionMetadata`
(block tables and slot mapping), so the runtime decides allocation, rollback and sharing.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from specdec.kernels import AttentionMetadata, cpu, paged_attention
from specdec.models.linear import Linear, version


@dataclass(frozen=True)
class GPTConfig:
    n_layer: int = 24
    d_model: int = 512
    n_head: int = 16
    vocab_size: int = 1025  # 1024 semantic tokens + EOS
    phoneme_vocab_size: int = 732  # 512 in v1 checkpoints
    bert_dim: int = 1024
    norm_eps: float = 1e-5

    def __post_init__(self):
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")

    @property
    def eos(self) -> int:
        return self.vocab_size - 1  # upstream asserts EOS == vocab_size - 1

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def d_ff(self) -> int:
        return 4 * self.d_model  # upstream ignores `linear_units` and hard-codes 4·d

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def sinusoid_table(n_pos: int, dim: int) -> torch.Tensor:
    """[n_pos, dim] interleaved sin/cos table, computed with upstream's float32 ops so values match bit for bit."""
    pe = torch.zeros(n_pos, dim)
    position = torch.arange(0, n_pos, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe


def prefix_lm_mask(prefix_lens: torch.Tensor, lens: torch.Tensor, T: int) -> torch.Tensor:
    """[B, T, T] bool (True = attend) for right-padded sequences: key j is visible to query i iff both lie inside
    the sequence and (j <= i or both lie in the text prefix). Padding rows see their own position only, so no row
    of the softmax is empty."""
    i = torch.arange(T)[None, :, None]
    j = torch.arange(T)[None, None, :]
    P, L = prefix_lens[:, None, None], lens[:, None, None]
    inside = (j < L) & (i < L)
    return (inside & ((j <= i) | ((i < P) & (j < P)))) | ((i >= L) & (j == i))


class Block(nn.Module):
    """Post-norm transformer block: x = LN1(x + Attn(x)); x = LN2(x + W2·relu(W1·x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.qkv = Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = Linear(cfg.d_model, cfg.d_model)
        self.ffn_in = Linear(cfg.d_model, cfg.d_ff)
        self.ffn_out = Linear(cfg.d_ff, cfg.d_model)
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)

    def forward(self, x: torch.Tensor, meta: AttentionMetadata, k_cache: torch.Tensor, v_cache: torch.Tensor):
        # `.forward` and torch.layer_norm skip nn.Module.__call__ and F's checks: a decode step is short enough to
        # feel them
        T, d = x.shape  # [T, d]: the new tokens of every sequence, flattened
        q, k, v = self.qkv.forward(x).view(T, 3, self.n_head, self.head_dim).unbind(1)  # 3 × [T, H, D]
        a = paged_attention(q, k, v, k_cache, v_cache, meta)  # [T, H, D]
        n1, n2 = self.norm1, self.norm2
        x = torch.layer_norm(x + self.out.forward(a.reshape(T, d)), n1.normalized_shape, n1.weight, n1.bias, n1.eps)
        h = self.ffn_out.forward(self.ffn_in.forward(x).relu_())
        return torch.layer_norm(x + h, n2.normalized_shape, n2.weight, n2.bias, n2.eps)

    def forward_dense(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Cache-free path for training and teacher forcing: x [B, T, d], mask [B, T, T] bool (True = attend)."""
        B, T, d = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 × [B, H, T, D]
        # fp32 even under a bf16 autocast (training): on CPU it is the faster of the two (fwd+bwd, v2 layer at
        # 16 × 250 tokens: 115 vs 185 ms, 2026-11-27), and the softmax keeps its precision
        with torch.autocast(x.device.type, enabled=False):
            a = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask[:, None])
        x = self.norm1(x + self.out(a.to(x.dtype).transpose(1, 2).reshape(B, T, d)))
        return self.norm2(x + self.ffn_out(F.relu(self.ffn_in(x))))


# per Blocks: (layers and pages, parameters, their versions, cpu.DecodeLayers or None). Kept outside the module so
# that deep copies and pickles never carry pointers into the original's weights.
_CPU_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class Blocks(nn.ModuleList):
    """The block stack of a GPT (or a draft) over the paged cache: on CPU, decode and verification passes run every
    block in one C call (kernels/cpu.c `decode_layers`); anything else goes op by op."""

    def forward(self, x: torch.Tensor, meta: AttentionMetadata, kv_cache, start: int = 0, end: int | None = None):
        """Blocks [start, end) on x [T, d]; kv_cache[i] = (k, v) pages of block i."""
        end = len(self) if end is None else end
        run = self._cpu_decode(x.shape[0], x, meta, kv_cache, start, end)
        if run is not None:
            return run(x, meta.slot_mapping, *meta.row_plan, meta.block_table)
        return self.per_op(x, meta, kv_cache, start, end)

    def train(self, mode: bool = True):
        if mode != self.training:
            _CPU_PLANS.pop(self, None)  # its packed weights go with the Linears' (Linear.train)
        return super().train(mode)

    def per_op(self, x: torch.Tensor, meta: AttentionMetadata, kv_cache, start: int = 0, end: int | None = None):
        """The same blocks one torch op at a time (prefill, GPUs, unpacked weights; the kernel's reference)."""
        for i in range(start, len(self) if end is None else end):
            x = self[i].forward(x, meta, *kv_cache[i])
        return x

    def _cpu_decode(self, rows: int, x: torch.Tensor, meta: AttentionMetadata, kv_cache, start: int, end: int):
        """The whole-block C kernel for these blocks (few new rows, all past the text prefix, x — the rows or the
        table they are embedded from — fp32 on CPU, every matmul packed for the CPU kernels), or None for the per-op
        path. Built once per (blocks, pages) and rebuilt when a parameter is modified in place (its version counter
        moves); checking costs ~40 µs per v2 pass, a full (version, storage) key ~100 µs."""
        if (rows > cpu.MAX_ROWS or not x.is_cpu or x.dtype != torch.float32 or meta.backend != "torch"
                or meta.row_plan is None):
            return None
        return self.cpu_plan(kv_cache, start, end)

    def cpu_plan(self, kv_cache, start: int = 0, end: int | None = None) -> "cpu.DecodeLayers | None":
        """The whole-block C kernel for blocks [start, end) over these pages, or None where it cannot run (see
        `_cpu_decode`)."""
        end = len(self) if end is None else end
        if torch.is_grad_enabled() or not cpu.available() or start >= end:
            return None
        kv = kv_cache[start:end]
        plan = _CPU_PLANS.get(self)
        # the plan keeps its pages alive, so pages at the same addresses are the very same pages
        where = (start, end, kv[0][0].data_ptr(), kv[-1][1].data_ptr())
        if plan is None or plan[0] != where or plan[2] != _versions(plan[1]):
            params = list(self[start:end].parameters())
            plan = _CPU_PLANS[self] = (where, params, _versions(params), _cpu_plan(self[start:end], kv))
        return plan[3]


def _versions(params: list) -> list[int]:
    try:
        return [p._version for p in params]
    except RuntimeError:  # an inference tensor among them (a model made under inference_mode)
        return [version(p) for p in params]


def _cpu_plan(blocks, kv) -> cpu.DecodeLayers | None:
    D = blocks[0].head_dim
    packs = [tuple(m.cpu_pack() for m in (b.qkv, b.out, b.ffn_in, b.ffn_out)) for b in blocks]
    if (D % 8 or D > cpu.MAX_HEAD_DIM or any(p is None for ps in packs for p in ps)
            or any(t.dtype != torch.float32 or not t.permute(2, 0, 1, 3).is_contiguous() for kvs in kv for t in kvs)):
        return None
    return cpu.DecodeLayers(packs, [(b.norm1, b.norm2) for b in blocks], kv)


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.bert_proj = Linear(cfg.bert_dim, d)
        self.text_embedding = nn.Embedding(cfg.phoneme_vocab_size, d)
        self.text_alpha = nn.Parameter(torch.ones(1))
        self.audio_embedding = nn.Embedding(cfg.vocab_size, d)
        self.audio_alpha = nn.Parameter(torch.ones(1))
        self.layers = Blocks(Block(cfg) for _ in range(cfg.n_layer))
        self.head = Linear(d, cfg.vocab_size, bias=False)
        self.register_buffer("pe", sinusoid_table(4000, d), persistent=False)
        self.quantization: str | None = None  # "int8": lossy block matmuls (specdec.models.int8.quantize_gpt)
        self.draft_temperature = 1.0  # as a draft: its sampling temperature ÷ the request's (distillation measures it)

    # ---- embeddings ---------------------------------------------------------------------------------------
    def position_table(self, n: int) -> torch.Tensor:
        """The sinusoid table [≥ n, d], grown (doubling) when n positions exceed it."""
        if n > self.pe.shape[0]:
            self.pe = sinusoid_table(max(n, 2 * self.pe.shape[0]), self.cfg.d_model).to(self.pe)
        return self.pe

    def _pe(self, positions: torch.Tensor) -> torch.Tensor:
        return self.position_table(int(positions.max()) + 1 if positions.numel() else 0)[positions]

    def embed_text(self, phones: torch.Tensor, bert: torch.Tensor | None = None) -> torch.Tensor:
        """phones [n] → [n, d]. `bert` is [bert_dim, n] (upstream's layout) or None for zeros."""
        x = self.text_embedding(phones)
        # bert_proj(zeros) is exactly its bias, so the zero case skips the [n, 1024] matmul
        x = x + (self.bert_proj.bias if bert is None else self.bert_proj(bert.t()))
        return x + self.text_alpha * self._pe(torch.arange(phones.shape[0], device=phones.device))

    def embed_audio(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """tokens [T], positions [T] (audio positions count from the first prompt token) → [T, d]."""
        return self.audio_embedding(tokens) + self.audio_alpha * self._pe(positions)

    def embed_batch(self, phones: list[torch.Tensor], tokens: list[torch.Tensor],
                    bert: list[torch.Tensor | None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded sequences of text then audio, laid out as at inference, for `forward_dense`:
        → x [B, T, d] and the prefix-LM mask [B, T, T]."""
        lens = [p.numel() + t.numel() for p, t in zip(phones, tokens)]
        T = max(lens)
        x = torch.zeros(len(lens), T, self.cfg.d_model, dtype=self.dtype, device=self.device)
        for b, (p, t) in enumerate(zip(phones, tokens)):
            n, m = p.numel(), t.numel()
            x[b, :n] = self.embed_text(p, None if bert is None else bert[b])
            x[b, n:n + m] = self.embed_audio(t, torch.arange(m, device=t.device))
        return x, prefix_lm_mask(torch.tensor([p.numel() for p in phones]), torch.tensor(lens), T)

    # ---- transformer --------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, meta: AttentionMetadata, kv_cache: list[tuple[torch.Tensor, torch.Tensor]],
                start_layer: int = 0, end_layer: int | None = None) -> torch.Tensor:
        """Run layers [start_layer, end_layer) on x [T, d], writing each new token's K/V into the pages given by
        `meta.slot_mapping`. kv_cache[i] = (k, v) pages of layer i, each [num_blocks, page_size, H, D]."""
        return self.layers.forward(x, meta, kv_cache, start_layer, end_layer)

    def forward_dense(self, x: torch.Tensor, mask: torch.Tensor, end_layer: int | None = None) -> torch.Tensor:
        """All tokens at once, no cache (training, distillation, teacher-forced evaluation).
        x [B, T, d] embedded inputs, mask [B, T, T] bool (True = attend; see `prefix_lm_mask`)."""
        for layer in self.layers[:end_layer]:
            x = layer.forward_dense(x, mask)
        return x

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
               kv_cache: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """A decode or verification pass: audio tokens [T] at audio positions [T] through every block and the head
        → (hidden [T, d], logits [T, vocab]). On CPU one C call (embedding, blocks, head; `cpu.DecodeLayers.step`)
        with the bits of embed_audio → forward → logits, which is the path elsewhere."""
        emb = self.audio_embedding.weight
        run = self.layers._cpu_decode(tokens.shape[0], emb, meta, kv_cache, 0, len(self.layers))
        if run is None:
            h = self.forward(self.embed_audio(tokens, positions), meta, kv_cache)
            return h, self.logits(h)
        head = self.head.cpu_pack()
        h, logits = run.step(tokens, positions, emb, self.position_table(int(positions.max()) + 1),
                             float(self.audio_alpha), meta.slot_mapping, *meta.row_plan, meta.block_table, head)
        return h, self.logits(h) if logits is None else logits

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h)  # [N, d] → [N, vocab]

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.head.weight.device
