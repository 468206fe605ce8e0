"""Paged KV cache: random sequences of allocate / append / truncate / fork / free against a contiguous reference."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from specdec.cache import BlockTable, PagePool
from specdec.errors import SpecdecError
from specdec.kernels import AttentionMetadata, attention, head_major, paged_attention

PADDED_DEFAULT = attention.PADDED_BATCH

H, D = 2, 4

ops = st.lists(st.tuples(st.sampled_from(["new", "append", "truncate", "fork", "free"]),
                         st.integers(0, 7), st.integers(1, 40)), min_size=1, max_size=40)


def _write(pool, kv, table, n, next_value):
    """Append n tokens to `table`, writing distinct values through the slot mapping as attention would."""
    start = table.num_tokens
    table.append(n)
    meta = AttentionMetadata([n], [table.num_tokens], [0], [table.blocks], pool.page_size)
    vals = torch.arange(next_value, next_value + n, dtype=torch.float32)[:, None, None].expand(n, H, D)
    k_cache, v_cache = kv[0]
    head_major(k_cache).index_copy_(1, meta.slot_mapping, vals.transpose(0, 1))
    head_major(v_cache).index_copy_(1, meta.slot_mapping, -vals.transpose(0, 1))
    return vals[:, 0, 0].tolist(), start


def _read(pool, kv, table):
    ps = pool.page_size
    slots = torch.tensor([table.blocks[t // ps] * ps + t % ps for t in range(table.num_tokens)], dtype=torch.long)
    k = head_major(kv[0][0]).index_select(1, slots)[0, :, 0]
    v = head_major(kv[0][1]).index_select(1, slots)[0, :, 0]
    return k.tolist(), v.tolist()


@settings(max_examples=150, deadline=None)
@given(page_size=st.sampled_from([1, 3, 16]), ops=ops)
def test_random_operations_match_a_contiguous_reference(page_size, ops):
    pool = PagePool(num_blocks=400, page_size=page_size)
    kv = pool.new_kv(1, H, D)
    seqs: list[tuple[BlockTable, list[float]]] = []
    counter = 0
    for op, which, n in ops:
        if op == "new" or not seqs:
            seqs.append((BlockTable(pool), []))
            continue
        table, ref = seqs[which % len(seqs)]
        if op == "append":
            vals, _ = _write(pool, kv, table, n, counter)
            counter += n
            ref.extend(vals)
        elif op == "truncate":
            keep = min(n, table.num_tokens) if n % 2 else table.num_tokens // 2
            table.truncate(keep)
            del ref[keep:]
        elif op == "fork":
            seqs.append((table.fork(), list(ref)))
        elif op == "free":
            table.free()
            ref.clear()
        for t, r in seqs:  # every sequence still reads back exactly its own history (copy-on-write held)
            k, v = _read(pool, kv, t)
            assert k == r and v == [-x for x in r]
    used = {b for t, _ in seqs for b in t.blocks}
    assert pool.num_free == pool.num_blocks - len(used)
    for t, _ in seqs:
        t.free()
    assert pool.num_free == pool.num_blocks and all(c == 0 for c in pool.ref_counts)


def test_fork_shares_pages_until_a_write():
    pool = PagePool(num_blocks=8, page_size=4)
    pool.new_kv(1, H, D)
    a = BlockTable(pool)
    a.append(6)  # 2 pages, the second half full
    b = a.fork()
    assert b.blocks == a.blocks and pool.num_free == 6
    b.append(1)  # writes into the shared half-full page: copied first
    assert b.blocks[0] == a.blocks[0] and b.blocks[1] != a.blocks[1] and pool.num_free == 5


def test_single_sequence_pages_stay_contiguous():
    pool = PagePool(num_blocks=64, page_size=4)
    t = BlockTable(pool)
    for n in [37, 1, 5, 1, 1, 20]:
        t.append(n)
    assert t.blocks == list(range(t.blocks[0], t.blocks[0] + len(t.blocks)))


def test_full_pool_is_a_clear_error():
    pool = PagePool(num_blocks=2, page_size=4)
    t = BlockTable(pool)
    try:
        t.append(9)
    except SpecdecError as e:
        assert "KV cache is full" in str(e)
    else:
        raise AssertionError("expected SpecdecError")


def _dense_reference(q, k, v, q_pos, prefix_len):
    """Plain softmax attention with the prefix-LM rule; q [Q, H, D], k/v [S, H, D]."""
    S = k.shape[0]
    j = torch.arange(S)[None, :]
    i = torch.tensor(q_pos)[:, None]
    visible = (j <= i) | ((i < prefix_len) & (j < prefix_len))
    scores = torch.einsum("qhd,shd->hqs", q.double(), k.double()) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~visible[None], float("-inf"))
    return torch.einsum("hqs,shd->qhd", scores.softmax(-1), v.double()).float()


@settings(max_examples=60, deadline=None)
@given(data=st.data(), page_size=st.sampled_from([1, 4, 16]), n_seq=st.integers(1, 4), scatter=st.booleans(),
       padded=st.booleans())
def test_torch_paged_attention_matches_dense_reference(data, page_size, n_seq, scatter, padded):
    """Ragged batch: each sequence has a cached context, then q_len new tokens (prefill when context = 0); both
    torch strategies (per-sequence views, one padded SDPA)."""
    attention.PADDED_BATCH = 1 if padded else 10**9
    try:
        _check_against_dense(data, page_size, n_seq, scatter)
    finally:
        attention.PADDED_BATCH = PADDED_DEFAULT


def _check_against_dense(data, page_size, n_seq, scatter):
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    pool = PagePool(num_blocks=200, page_size=page_size)
    (k_cache, v_cache), = pool.new_kv(1, H, D)
    k_cache.fill_(float("nan"))  # unwritten slots must never reach the output (0·NaN = NaN)
    v_cache.fill_(float("nan"))
    if scatter:  # interleave the sequences' pages so the gather path runs too
        filler = BlockTable(pool)
    histories, tables, q_lens, prefix_lens = [], [], [], []
    for _ in range(n_seq):
        ctx = data.draw(st.integers(0, 30))
        ql = data.draw(st.integers(1, 16)) if ctx else data.draw(st.integers(1, 24))
        t = BlockTable(pool)
        if ctx:
            t.append(ctx)
        if scatter:
            filler.append(page_size)
        histories.append((torch.randn(ctx + ql, H, D, generator=g), torch.randn(ctx + ql, H, D, generator=g)))
        tables.append(t)
        q_lens.append(ql)
        prefix_lens.append(data.draw(st.integers(0, ctx + ql)))
    for t, (k, v), ql in zip(tables, histories, q_lens):  # the cached context, written as earlier steps would
        ctx = k.shape[0] - ql
        if ctx:
            meta = AttentionMetadata([ctx], [ctx], [0], [t.blocks], page_size)
            head_major(k_cache).index_copy_(1, meta.slot_mapping, k[:ctx].transpose(0, 1))
            head_major(v_cache).index_copy_(1, meta.slot_mapping, v[:ctx].transpose(0, 1))
        t.append(ql)
    meta = AttentionMetadata(q_lens, [t.num_tokens for t in tables], prefix_lens, [t.blocks for t in tables],
                             page_size, backend="torch")
    q = torch.randn(sum(q_lens), H, D, generator=g)
    k_new = torch.cat([k[-ql:] for (k, _), ql in zip(histories, q_lens)])
    v_new = torch.cat([v[-ql:] for (_, v), ql in zip(histories, q_lens)])
    out = paged_attention(q, k_new, v_new, k_cache, v_cache, meta)
    q0 = 0
    for (k, v), ql, pl in zip(histories, q_lens, prefix_lens):
        S = k.shape[0]
        ref = _dense_reference(q[q0:q0 + ql], k, v, list(range(S - ql, S)), pl)
        torch.testing.assert_close(out[q0:q0 + ql], ref, atol=1e-5, rtol=1e-5)
        q0 += ql
