"""CPU kernels on x86 (kernels/cpu.c), built on first use: for few rows the exact fp16-weight linear, the W8A8
int8 linear (lossy; specdec.models.int8; AVX-512 VNNI where the CPU has it, else AVX2, bit-identical), whole
decode blocks over the paged cache (`DecodeLayers`, also from token ids to logits), a draft's drafting round
(`DraftLoop`) and the accept step (`accept_round`); for many rows of the int8 linear (the eco target's prefill), an
AMX-INT8 kernel where the CPU has AMX (`AmxInt8`).

The C source is compiled once per machine with the system C compiler (`$CC`, else `cc`) into
`$XDG_CACHE_HOME/specdec` (default ~/.cache/specdec), named by the hash of source and flags, and loaded with ctypes
(which releases the GIL for the call). Where that cannot happen — not Linux x86-64, no AVX2/F16C/FMA, no compiler,
or `SPECDEC_CPU_KERNELS=0` — `available()` is False and callers keep torch (FBGEMM's fp16 GEMM, exact too, for the
fp16 weights; torch's int8 GEMM for int8, bit-identical; the per-op block).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import sys

import torch

# Rows the kernels take (decode, verification, small batches). With AVX-512 they match FBGEMM's GEMM from 9 to 220
# rows and beat it by 6-20% at 16-32 (2-core Xeon, 2026-11-26); a whole v2 pass of 10 / 16 rows takes 16.7 / 24.5 ms
# in decode_layers against 30.4 / 39.0 op by op.
MAX_ROWS = 16
MAX_HEAD_DIM = 128  # MAX_D in the C source
_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu.c")
_FLAGS = ["-O3", "-mavx2", "-mf16c", "-mfma", "-fopenmp", "-shared", "-fPIC"]
_NB = 32  # columns per packed block, as in the C source
_p, _i, _f = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float


class _Lin(ctypes.Structure):  # `Lin` in the C source
    _fields_ = [("w", _p), ("scale", _p), ("bias", _p), ("K", _i), ("N", _i), ("elem", _i)]


class _Layer(ctypes.Structure):  # `Layer` in the C source
    _fields_ = [("qkv", _Lin), ("out", _Lin), ("ffn_in", _Lin), ("ffn_out", _Lin), ("ln1_w", _p), ("ln1_b", _p),
                ("ln2_w", _p), ("ln2_b", _p), ("k_cache", _p), ("v_cache", _p)]


class _Draft(ctypes.Structure):  # `Draft` in the C source
    _fields_ = [("layers", _p), ("n_layer", _i), ("H", _i), ("D", _i), ("eps", _f), ("fc", _p), ("head", _p),
                ("emb", _p), ("pe", _p), ("alpha", _f), ("V", _i)]


class _Sampling(ctypes.Structure):  # `Sampling` in the C source
    _fields_ = [("top_k", _i), ("top_p", _f), ("temperature", _f), ("repetition_penalty", _f)]


def _cpu_supported() -> bool:
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return {"avx2", "f16c", "fma"} <= set(flags)


@functools.lru_cache(maxsize=1)
def _lib():
    if os.environ.get("SPECDEC_CPU_KERNELS", "1") == "0" or not _cpu_supported():
        return None
    with open(_SRC, "rb") as f:
        key = hashlib.sha256(f.read() + " ".join(_FLAGS).encode()).hexdigest()[:16]
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "specdec")
    so = os.path.join(cache, f"cpu-{key}.so")
    if not os.path.exists(so):
        tmp = f"{so}.{os.getpid()}.tmp"
        try:
            os.makedirs(cache, exist_ok=True)
            subprocess.run([os.environ.get("CC", "cc"), *_FLAGS, "-o", tmp, _SRC, "-lm"], check=True,
                           capture_output=True, timeout=120)
            os.replace(tmp, so)  # atomic: a concurrent builder or a killed one never leaves half a library
        except (OSError, subprocess.SubprocessError):
            if os.path.exists(tmp):
                os.remove(tmp)
            return None
    lib = ctypes.CDLL(so)
    lib.pack_blocks.argtypes, lib.pack_blocks.restype = [_p, _i, _i, _i, _p], None
    lib.pack_int8.argtypes, lib.pack_int8.restype = [_p, _i, _i, _p], None
    lib.linear.argtypes, lib.linear.restype = [_p, _p, _p, _i, _i, _i, _p, _i, _p], None
    lib.decode_layers.argtypes = [_p, _i, _p, _i, _i, _i, _f, _p, _p, _p, _p, _i, _i, _i]
    lib.decode_layers.restype = None
    lib.decode_step.argtypes = [_p, _i, _p, _p, _f, _p, _p, _p, _i, _i, _i, _f, _p, _p, _p, _p, _i, _i, _i, _p, _p]
    lib.decode_step.restype = None
    lib.prefix_attention.argtypes = [_p, _i, _p, _p, _i, _i, _i, _p, _i, _i, _p, _p]
    lib.prefix_attention.restype = None
    lib.draft_loop.argtypes = [_p, _i, _p, _p, _i, _p, _p, _p, _p, _i, _i, _i, _p, _p, _p, _p, _p, _f,
                               ctypes.c_int, _i, _p, _p, _p, _p]
    lib.draft_loop.restype = None
    lib.accept_round.argtypes = [_p, _i, _i, _p, _p, _p, _p, _p, _p, _p, _i, _p, _p]
    lib.accept_round.restype = ctypes.c_int
    lib.set_avx512.argtypes, lib.set_avx512.restype = [ctypes.c_int], ctypes.c_int
    lib.amx_init.restype = ctypes.c_int
    lib.set_vnni.argtypes, lib.set_vnni.restype = [ctypes.c_int], ctypes.c_int
    lib.amx_pack_int8.argtypes, lib.amx_pack_int8.restype = [_p, _i, _i, _p], None
    lib.amx_linear_int8.argtypes, lib.amx_linear_int8.restype = [_p, _p, _p, _i, _i, _p, _i, _p], None
    return lib


def available() -> bool:
    return _lib() is not None


@functools.lru_cache(maxsize=1)
def amx_available() -> bool:
    """The CPU has AMX-INT8 and Linux granted this process its tile registers (asked once, here)."""
    return available() and bool(_lib().amx_init())


def use_vnni(on: bool) -> bool:
    """Let the int8 kernels use AVX-512 VNNI where the CPU has it (the default), else AVX2 (the same bits, slower);
    returns whether they now do."""
    return bool(_lib().set_vnni(int(on)))


def use_avx512(on: bool) -> bool:
    """Let the few-rows kernels use AVX-512 where the CPU has it (the default); returns whether they now do."""
    return bool(_lib().set_avx512(int(on)))


class _Packed:
    """Weights [K, N] packed for the kernels (`data`), one scale per column or None, bias [N] or None."""

    def __init__(self, data: torch.Tensor, K: int, N: int, scale: torch.Tensor | None, bias: torch.Tensor | None):
        self.K, self.N, self.data = K, N, data
        self.scale = None if scale is None else scale.detach().float().contiguous()
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self._bind()

    def _bind(self) -> None:
        self.lin = _Lin(self.data.data_ptr(), None if self.scale is None else self.scale.data_ptr(),
                        None if self.bias is None else self.bias.data_ptr(), self.K, self.N, self.data.element_size())
        self._args = (self.lin.w, self.lin.scale, self.lin.bias, self.K, self.N, self.lin.elem)

    # copies and pickles (deepcopy of a model) carry the tensors and point at their own
    def __getstate__(self) -> dict:
        return {"K": self.K, "N": self.N, "data": self.data, "scale": self.scale, "bias": self.bias}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._bind()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [M, K] fp32 contiguous → [M, N]."""
        y = torch.empty(x.shape[0], self.N)
        _lib().linear(*self._args, x.data_ptr(), x.shape[0], y.data_ptr())
        return y


class PackedFP16(_Packed):
    """W [K, N] fp32 whose values are exactly representable in fp16: exact."""

    def __init__(self, w: torch.Tensor, bias: torch.Tensor | None):
        K, N = w.shape
        w = w.detach().to(torch.float16).contiguous()
        data = torch.empty(-(-N // _NB) * K * _NB, dtype=torch.float16)
        _lib().pack_blocks(w.data_ptr(), K, N, 2, data.data_ptr())
        super().__init__(data, K, N, None, bias)


class PackedInt8(_Packed):
    """Q [K, N] int8 with one scale per column [N]: y = W8A8(x, Q)·scale + bias (specdec.models.int8 defines it)."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        K, N = q.shape
        data = torch.empty(-(-N // _NB) * -(-K // 4) * 4 * _NB, dtype=torch.uint8)
        _lib().pack_int8(q.detach().contiguous().data_ptr(), K, N, data.data_ptr())
        super().__init__(data, K, N, scale, bias)


class AmxInt8(_Packed):
    """Q [K, N] int8 with one scale per column and an optional bias in AMX tiles, for many rows (`amx_linear_int8`:
    the W8A8 arithmetic of `PackedInt8`, bit-identical rows). Needs `amx_available()`, K % 64 == 0 and N % 16 == 0
    (`fits`)."""

    @staticmethod
    def fits(K: int, N: int) -> bool:
        return K % 64 == 0 and N % 16 == 0 and amx_available()

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        K, N = q.shape
        tiles = torch.empty(K * N, dtype=torch.int8)
        _lib().amx_pack_int8(q.detach().contiguous().data_ptr(), K, N, tiles.data_ptr())
        super().__init__(tiles, K, N, scale, bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [M, K] fp32 contiguous → [M, N]."""
        y = torch.empty(x.shape[0], self.N)
        _lib().amx_linear_int8(*self._args[:5], x.data_ptr(), x.shape[0], y.data_ptr())
        return y


class DecodeLayers:
    """Whole post-norm blocks for up to MAX_ROWS new tokens in one C call (`decode_layers`): per layer the packed
    qkv / out / ffn_in / ffn_out linears, the two LayerNorms and that layer's K/V pages (head-major storage, see
    specdec.kernels.attention). Holds references to everything it points at."""

    def __init__(self, linears: list[tuple[_Packed, _Packed, _Packed, _Packed]], norms: list[tuple[torch.nn.LayerNorm,
                 torch.nn.LayerNorm]], kv: list[tuple[torch.Tensor, torch.Tensor]]):
        self.keep = (linears, norms, kv)
        nb, ps, self.H, self.D = kv[0][0].shape
        self.num_slots, self.page_size, self.eps = nb * ps, ps, norms[0][0].eps
        self.layers = (_Layer * len(linears))(*[
            _Layer(*(p.lin for p in lins), n1.weight.data_ptr(), n1.bias.data_ptr(), n2.weight.data_ptr(),
                   n2.bias.data_ptr(), k.data_ptr(), v.data_ptr())
            for lins, (n1, n2), (k, v) in zip(linears, norms, kv)])

    def __call__(self, x: torch.Tensor, slot_mapping: torch.Tensor, row_seq: torch.Tensor, row_keys: torch.Tensor,
                 block_table: torch.Tensor) -> torch.Tensor:
        """x [T, d] fp32 → [T, d]; slot_mapping [T] int64, row_seq / row_keys [T] int32, block_table [B, W] int32
        (see decode_layers in the C source)."""
        x = x.contiguous().clone()
        _lib().decode_layers(self.layers, len(self.layers), x.data_ptr(), x.shape[0], self.H, self.D, self.eps,
                             slot_mapping.data_ptr(), row_seq.data_ptr(), row_keys.data_ptr(), block_table.data_ptr(),
                             block_table.shape[1], self.page_size, self.num_slots)
        return x

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, emb: torch.Tensor, pe: torch.Tensor, alpha: float,
             slot_mapping: torch.Tensor, row_seq: torch.Tensor, row_keys: torch.Tensor, block_table: torch.Tensor,
             head: _Packed | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Audio tokens [T] int64 at positions [T] int64 (rows of the sinusoid table pe [n, d]; emb [V, d] fp32)
        through the blocks and, given, the head (`decode_step` in the C source) → (x [T, d], logits [T, N] or
        None); the other arguments as for __call__."""
        T = tokens.shape[0]
        x = torch.empty(T, self.H * self.D)
        logits = None if head is None else torch.empty(T, head.N)
        _lib().decode_step(self.layers, len(self.layers), emb.data_ptr(), pe.data_ptr(), alpha, tokens.data_ptr(),
                           positions.data_ptr(), x.data_ptr(), T, self.H, self.D, self.eps, slot_mapping.data_ptr(),
                           row_seq.data_ptr(), row_keys.data_ptr(), block_table.data_ptr(), block_table.shape[1],
                           self.page_size, self.num_slots, None if head is None else ctypes.addressof(head.lin),
                           _ptr(logits))
        return x, logits


def prefix_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                     keys: torch.Tensor) -> torch.Tensor:
    """One sequence's prefill attention (see `prefix_attention` in the C source): q [T, H, D] fp32 with unit stride
    inside a row, its new K/V already in the pages [num_blocks, page_size, H, D] (head-major storage), block_table
    [W] int32 covering max(keys) tokens, keys [T] int32: how many of the sequence's first keys each row sees →
    [T, H, D]."""
    T, H, D = q.shape
    assert q.stride(2) == 1 and q.stride(1) == D and q.dtype == torch.float32 and D % 32 == 0
    nb, ps = k_cache.shape[:2]
    out = torch.empty(T, H, D)
    _lib().prefix_attention(q.data_ptr(), q.stride(0), k_cache.data_ptr(), v_cache.data_ptr(), H, D, nb * ps,
                            block_table.data_ptr(), ps, T, keys.data_ptr(), out.data_ptr())
    return out


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def sampling_structs(params: list) -> ctypes.Array:
    """specdec.sampling.SamplingParams per sequence → the C `Sampling` array."""
    return (_Sampling * len(params))(*[_Sampling(p.top_k or 0, p.top_p, p.temperature, p.repetition_penalty)
                                       for p in params])


def accept_round(logits: torch.Tensor, start: list[int], drafts: list[int], q: torch.Tensor, u: torch.Tensor,
                 noise: torch.Tensor, seen: torch.Tensor, n_gen: list[int], min_steps: int, params: list
                 ) -> tuple[torch.Tensor, bool]:
    """One round's accept step in C (see `accept_round` in the C source): logits [N, V] fp32, start [B+1] (the
    sequences' first rows), drafts [N - B] (each sequence's drafts in turn), q [N - B, V] and u [N - B] fp32 (per
    draft), noise [B, V] fp32, seen [B, V] bool, n_gen [B], params: SamplingParams per sequence
    → ([B, 3] int64: accepted, token, stop position or -1; whether a draft row was non-finite)."""
    B, V = noise.shape
    ints = torch.tensor(start + drafts + n_gen)  # one tensor for the three lists: a round is short
    at, step = ints.data_ptr(), ints.element_size()
    out = torch.empty(B, 3, dtype=torch.long)
    sp = sampling_structs(params)  # held: the C call reads it
    broken = _lib().accept_round(logits.data_ptr(), V, B, at, at + (B + 1) * step, q.data_ptr(), u.data_ptr(),
                                 noise.data_ptr(), seen.data_ptr(), at + (B + 1 + len(drafts)) * step, min_steps,
                                 ctypes.addressof(sp), out.data_ptr())
    return out, bool(broken)


class DraftLoop:
    """A draft model's whole drafting round in one C call (`draft_loop`): blocks → head → the upstream warper chain →
    a sample → the sample's embedding (→ fc for EAGLE) → blocks …, up to k tokens per sequence."""

    def __init__(self, layers: DecodeLayers, head: _Packed, fc: _Packed | None):
        self.keep = (layers, head, fc)
        self.layers = layers
        self.model = _Draft(ctypes.cast(layers.layers, _p), len(layers.layers), layers.H, layers.D, layers.eps,
                            None if fc is None else ctypes.addressof(fc.lin), ctypes.addressof(head.lin))

    def __call__(self, rows0: torch.Tensor, h0: torch.Tensor | None, per_seq: torch.Tensor, block_table: torch.Tensor,
                 emb: torch.Tensor, pe: torch.Tensor, alpha: float, params: list, seen: torch.Tensor,
                 noise: torch.Tensor, threshold: float, handoff: bool):
        """rows0 [3, T0] int64: the first pass's tokens, their absolute positions and sequences; h0 [T0, d] the
        hidden states the fc takes beside them (EAGLE; else None); per_seq [5, B] int64 rows, per sequence: its last
        row in rows0, that row's position and audio position, the drafts it may make, the drafts during which EOS is
        banned; block_table [B, W] int32 (covering every fed position), params (SamplingParams per sequence), seen
        [B, V] bool (updated in place), noise [B, K, V] > 0; emb [V, d], pe [n, d] and alpha embed every fed token.
        → tokens [B, K] int64, q [B, K, V], hidden [B, K+1, d] (with handoff, else None), n [B] int64 drafts made."""
        B, K, V = noise.shape
        d = emb.shape[1]
        m = self.model
        m.emb, m.pe, m.alpha, m.V = emb.data_ptr(), pe.data_ptr(), alpha, V
        sp = sampling_structs(params)
        tokens = torch.zeros(B, K, dtype=torch.long)
        q = torch.zeros(B, K, V)
        hidden = torch.empty(B, K + 1, d) if handoff else None
        n = torch.empty(B, dtype=torch.long)
        _lib().draft_loop(ctypes.addressof(m), B, rows0.data_ptr(), _ptr(h0), rows0.shape[1],
                          *(per_seq[i].data_ptr() for i in range(3)),
                          block_table.data_ptr(), block_table.shape[1], self.layers.page_size, self.layers.num_slots,
                          per_seq[3].data_ptr(), per_seq[4].data_ptr(), ctypes.addressof(sp), seen.data_ptr(),
                          noise.data_ptr(),
                          threshold, int(handoff), K, tokens.data_ptr(), q.data_ptr(), _ptr(hidden), n.data_ptr())
        return tokens, q, hidden, n
