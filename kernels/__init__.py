"""Attention and sampling kernels: Triton for CUDA (interpreted on CPU in tests) and torch references."""
from specdec.kernels.attention import (BACKENDS, AttentionMetadata, default_backend, head_major, new_kv_cache,
                                       paged_attention, paged_attention_torch, store_kv_torch)

__all__ = ["BACKENDS", "AttentionMetadata", "default_backend", "head_major", "new_kv_cache", "paged_attention",
           "paged_attention_torch", "store_kv_torch"]
