"""Paged KV cache: one pool of fixed-size pages, one block table per sequence.

A block id names the same page in every registered model's KV tensors (target and draft alike), so allocation,
rollback, fork and free happen once per sequence for all models. Models with different shapes keep their own
tensors under the shared ids; a `layerskip` draft registers nothing and reads the target's own first layers.

Rollback of rejected tokens is `truncate(n)`: only the length moves (pages past it return to the pool). Forks
share pages copy-on-write: a shared page is copied the moment either owner appends into it.
"""
from __future__ import annotations

import torch

from specdec.errors import SpecdecError
from specdec.kernels import new_kv_cache

KVTensors = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (k, v), each [num_blocks, page_size, H, D]


class PagePool:
    def __init__(self, num_blocks: int, page_size: int):
        if num_blocks < 1 or page_size < 1:
            raise SpecdecError(f"page pool needs num_blocks >= 1 and page_size >= 1 (got {num_blocks}, {page_size})")
        self.num_blocks, self.page_size = num_blocks, page_size
        self.ref_counts = [0] * num_blocks
        self._free = set(range(num_blocks))
        self.kv: list[KVTensors] = []

    # ---- storage -------------------------------------------------------------------------------------------
    def new_kv(self, n_layer: int, n_head: int, head_dim: int, dtype=torch.float32, device="cpu") -> KVTensors:
        """Allocate and register one model's pages for every block id."""
        def pages():
            return new_kv_cache(self.num_blocks, self.page_size, n_head, head_dim, dtype, device)
        kv = [(pages(), pages()) for _ in range(n_layer)]
        self.kv.append(kv)
        return kv

    def copy_block(self, src: int, dst: int) -> None:
        for kv in self.kv:
            for k, v in kv:
                k[dst].copy_(k[src])
                v[dst].copy_(v[src])

    # ---- accounting ----------------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self, after: int | None) -> int:
        """One free page, preferably `after + 1` so a sequence's pages stay one contiguous run (the CPU attention
        path then reads them as a view); a new sequence starts in the middle of the longest free run, which keeps
        room for the sequence before it to grow contiguously too."""
        if not self._free:
            raise SpecdecError(f"KV cache is full ({self.num_blocks} pages of {self.page_size} tokens); "
                               "raise max_tokens or lower the batch size")
        block = after + 1 if after is not None and after + 1 in self._free else self._middle_of_longest_free_run()
        self._free.remove(block)
        self.ref_counts[block] = 1
        return block

    def _middle_of_longest_free_run(self) -> int:
        best_start, best_len, start = 0, 0, None
        for b in range(self.num_blocks + 1):
            if b < self.num_blocks and b in self._free:
                start = b if start is None else start
            elif start is not None:
                if b - start > best_len:
                    best_start, best_len = start, b - start
                start = None
        # a run at the start of the pool has no left neighbour to leave room for
        return best_start if best_start == 0 else best_start + (best_len - 1) // 2

    def share(self, block: int) -> None:
        self.ref_counts[block] += 1

    def release(self, block: int) -> None:
        assert self.ref_counts[block] > 0, f"double free of page {block}"
        self.ref_counts[block] -= 1
        if self.ref_counts[block] == 0:
            self._free.add(block)


class BlockTable:
    """One sequence's pages and length (in tokens)."""

    def __init__(self, pool: PagePool):
        self.pool = pool
        self.blocks: list[int] = []
        self.num_tokens = 0

    def append(self, n: int) -> None:
        """Make room for n more tokens (their slots follow `num_tokens`) and count them in."""
        ps, pool = self.pool.page_size, self.pool
        if self.num_tokens % ps and pool.ref_counts[self.blocks[-1]] > 1:  # writing into a shared page: copy it
            old = self.blocks[-1]
            new = pool.allocate(self.blocks[-2] if len(self.blocks) > 1 else None)
            pool.copy_block(old, new)
            pool.release(old)
            self.blocks[-1] = new
        while len(self.blocks) * ps < self.num_tokens + n:
            self.blocks.append(pool.allocate(self.blocks[-1] if self.blocks else None))
        self.num_tokens += n

    def truncate(self, n: int) -> None:
        """Keep the first n tokens (rollback of rejected drafts); pages past them go back to the pool."""
        assert 0 <= n <= self.num_tokens, (n, self.num_tokens)
        keep = -(-n // self.pool.page_size)
        for block in self.blocks[keep:]:
            self.pool.release(block)
        del self.blocks[keep:]
        self.num_tokens = n

    def fork(self) -> "BlockTable":
        """A second sequence with the same contents, sharing every page until one of them writes."""
        child = BlockTable(self.pool)
        child.blocks, child.num_tokens = list(self.blocks), self.num_tokens
        for block in self.blocks:
            self.pool.share(block)
        return child

    def free(self) -> None:
        self.truncate(0)
