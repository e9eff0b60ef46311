"""Paged attention over a block-table KV cache: decode (one query per sequence) and prefill.

Caches are [num_blocks, block_size, num_kv_heads, head_dim]; `block_tables[b, i]` is the
cache block holding positions i*block_size .. (i+1)*block_size - 1 of sequence b. Query head
h reads kv head h // (Hq // Hkv) (GQA). Scores, softmax and the accumulator are float32.

- `paged_decode_attention`: one program per (sequence, kv head, split) handles all the query
  heads of its GQA group (padded to 16 rows, so that both products are `tl.dot` tensor-core
  tiles), with an online softmax (running max and sum) over BLOCK_N-token tiles of the
  context. Long contexts are split over `num_splits` programs (split-K); a
  reduce kernel then merges the partial results with their maxima and sums.
- `paged_prefill_attention`: one program per (sequence, kv head, tile of new tokens); the new
  tokens are the last q_len positions of their context and attend causally over it, so
  prefix-cache hits and chunked prefill (earlier context already cached) just work. It is
  also correct for q_len == 1, so it can serve a mixed batch on its own.

No sliding window yet. Each kernel has a plain-torch reference with the same signature.
"""

from __future__ import annotations

import torch

try:  # Triton is optional: on CPU the engine uses the references.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None
    tl = None

# Context tokens per split-K partition, and the number of programs a decode aims for.
_PARTITION_TOKENS = 256
_TARGET_PROGRAMS = 128


# ----------------------------------------------------------------------------- references


def _gather_context(
    cache: torch.Tensor, block_table: torch.Tensor, ctx_len: int, group: int
) -> torch.Tensor:
    """One sequence's first ctx_len cached rows as [ctx_len, Hq, D] (kv heads repeated)."""
    block_size = cache.shape[1]
    blocks = block_table[: -(-ctx_len // block_size)].long()
    rows = cache[blocks].reshape(-1, cache.shape[2], cache.shape[3])[:ctx_len]
    return rows.repeat_interleave(group, dim=1) if group > 1 else rows


def paged_decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    out: torch.Tensor | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Torch reference: q [B, Hq, D] attends over context_lens[b] cached tokens -> [B, Hq, D].

    `num_splits` is accepted for signature parity and ignored.
    """
    del num_splits
    group = q.shape[1] // k_cache.shape[2]
    if out is None:
        out = torch.empty_like(q)
    for b, ctx_len in enumerate(context_lens.tolist()):
        if ctx_len == 0:
            out[b] = 0
            continue
        keys = _gather_context(k_cache, block_tables[b], ctx_len, group).float()
        values = _gather_context(v_cache, block_tables[b], ctx_len, group).float()
        scores = torch.einsum("hd,khd->hk", q[b].float(), keys) * scale
        probs = torch.softmax(scores, dim=-1)
        out[b] = torch.einsum("hk,khd->hd", probs, values).to(out.dtype)
    return out


def paged_prefill_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    max_query_len: int | None = None,
) -> torch.Tensor:
    """Torch reference: packed new tokens q [T, Hq, D] -> [T, Hq, D], causal over the context.

    Sequence b's tokens are q[query_start_loc[b]:query_start_loc[b+1]], the last q_len
    positions of its seq_lens[b]-token context (all of which is already in the cache).
    `max_query_len` is accepted for signature parity and ignored.
    """
    del max_query_len
    group = q.shape[1] // k_cache.shape[2]
    out = torch.zeros_like(q)
    starts = query_start_loc.tolist()
    for b, ctx_len in enumerate(seq_lens.tolist()):
        lo, hi = starts[b], starts[b + 1]
        q_len = hi - lo
        if q_len == 0:
            continue
        keys = _gather_context(k_cache, block_tables[b], ctx_len, group).float()
        values = _gather_context(v_cache, block_tables[b], ctx_len, group).float()
        scores = torch.einsum("qhd,khd->hqk", q[lo:hi].float(), keys) * scale
        query_pos = torch.arange(ctx_len - q_len, ctx_len, device=q.device)[:, None]
        key_pos = torch.arange(ctx_len, device=q.device)[None, :]
        scores.masked_fill_(key_pos > query_pos, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[lo:hi] = torch.einsum("hqk,khd->qhd", probs, values).to(out.dtype)
    return out


# ----------------------------------------------------------------------------- kernels

if triton is not None:
    # Finite "minus infinity" for the running max, so exp(m_old - m_new) never sees inf - inf.
    _NEG_BIG = tl.constexpr(-1.0e30)

    @triton.jit
    def _attend_tile(
        q,
        m,
        l_sum,
        acc,
        k_cache_ptr,
        v_cache_ptr,
        table,
        t,
        t_ok,
        visible,
        d,
        d_ok,
        kvh,
        stride_kb,
        stride_ks,
        stride_kh,
        stride_vb,
        stride_vs,
        stride_vh,
        block_size,
        scale,
        IEEE_DOT: tl.constexpr,
    ):
        """One online-softmax step over the cached tokens `t` (their paged K/V gathered
        through `table`): the query rows `q` see the tokens where `visible` holds. Returns
        the updated running max, sum and accumulator."""
        blk = tl.load(table + t // block_size, mask=t_ok, other=0).to(tl.int64)
        off = (t % block_size).to(tl.int64)
        kv_mask = t_ok[:, None] & d_ok[None, :]
        k_rows = blk * stride_kb + off * stride_ks + kvh * stride_kh
        k = tl.load(k_cache_ptr + k_rows[:, None] + d[None, :], mask=kv_mask, other=0.0)
        if IEEE_DOT:
            scores = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            scores = tl.dot(q, tl.trans(k))
        scores = tl.where(visible, scores * scale, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(scores - m_new[:, None])
        l_sum = l_sum * alpha + tl.sum(p, axis=1)
        v_rows = blk * stride_vb + off * stride_vs + kvh * stride_vh
        v = tl.load(v_cache_ptr + v_rows[:, None] + d[None, :], mask=kv_mask, other=0.0)
        if IEEE_DOT:
            pv = tl.dot(p, v.to(tl.float32), input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        return m_new, l_sum, acc * alpha[:, None] + pv

    @triton.jit(do_not_specialize=["stride_bt"])
    def _decode_kernel(
        q_ptr,
        k_cache_ptr,
        v_cache_ptr,
        bt_ptr,
        ctx_ptr,
        out_ptr,
        part_out_ptr,
        part_m_ptr,
        part_l_ptr,
        scale,
        stride_qb,
        stride_qh,
        stride_ob,
        stride_oh,
        stride_kb,
        stride_ks,
        stride_kh,
        stride_vb,
        stride_vs,
        stride_vh,
        stride_bt,
        block_size,
        GROUP: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        NUM_SPLITS: tl.constexpr,
        BLOCK_G: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_N: tl.constexpr,
        IEEE_DOT: tl.constexpr,
    ):
        """Program (b, kv head, split): the GROUP query heads of that kv head over one split.
        The GROUP rows are padded to BLOCK_G >= 16 so both products run as tl.dot (tensor
        cores); the padded rows are masked out. Each sequence cuts its own context into
        NUM_SPLITS parts of whole BLOCK_N tiles (so the launch depends on no host-side
        length and a CUDA graph can hold it); splits past a short context are empty."""
        b = tl.program_id(0)
        kvh = tl.program_id(1)
        split = tl.program_id(2)
        ctx = tl.load(ctx_ptr + b)
        split_len = tl.cdiv(tl.cdiv(ctx, NUM_SPLITS), BLOCK_N) * BLOCK_N
        start = split * split_len
        end = tl.minimum(start + split_len, ctx)

        g = tl.arange(0, BLOCK_G)
        d = tl.arange(0, BLOCK_D)
        g_ok = g < GROUP
        d_ok = d < HEAD_DIM
        qh = kvh * GROUP + g
        q = tl.load(
            q_ptr + b * stride_qb + qh[:, None] * stride_qh + d[None, :],
            mask=g_ok[:, None] & d_ok[None, :],
            other=0.0,
        )

        m = tl.full([BLOCK_G], _NEG_BIG, tl.float32)
        l_sum = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
        table = bt_ptr + b.to(tl.int64) * stride_bt
        for t0 in range(start, end, BLOCK_N):
            t = t0 + tl.arange(0, BLOCK_N)
            t_ok = t < end
            m, l_sum, acc = _attend_tile(
                q, m, l_sum, acc, k_cache_ptr, v_cache_ptr, table, t, t_ok, t_ok[None, :],
                d, d_ok, kvh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                block_size, scale, IEEE_DOT,
            )  # fmt: skip

        l_safe = tl.where(l_sum > 0.0, l_sum, 1.0)
        result = acc / l_safe[:, None]
        if NUM_SPLITS == 1:
            tl.store(
                out_ptr + b * stride_ob + qh[:, None] * stride_oh + d[None, :],
                result.to(out_ptr.dtype.element_ty),
                mask=g_ok[:, None] & d_ok[None, :],
            )
        else:
            # Partials are contiguous [B, Hq, NUM_SPLITS(, BLOCK_D)] float32.
            row = (b * (tl.num_programs(1) * GROUP) + qh) * NUM_SPLITS + split
            tl.store(
                part_out_ptr + row[:, None] * BLOCK_D + d[None, :],
                result,
                mask=g_ok[:, None] & d_ok[None, :],
            )
            tl.store(part_m_ptr + row, m, mask=g_ok)
            tl.store(part_l_ptr + row, l_sum, mask=g_ok)

    @triton.jit(do_not_specialize=["num_rows"])
    def _decode_reduce_kernel(
        part_out_ptr,
        part_m_ptr,
        part_l_ptr,
        out_ptr,
        num_rows,
        num_q_heads,
        stride_ob,
        stride_oh,
        HEAD_DIM: tl.constexpr,
        NUM_SPLITS: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_S: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """Merge the splits of BLOCK_R (sequence, query head) rows."""
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        s = tl.arange(0, BLOCK_S)
        d = tl.arange(0, BLOCK_D)
        r_ok = r < num_rows
        rs_ok = r_ok[:, None] & (s < NUM_SPLITS)[None, :]
        idx = r[:, None] * NUM_SPLITS + s[None, :]
        m = tl.load(part_m_ptr + idx, mask=rs_ok, other=_NEG_BIG)
        l_sum = tl.load(part_l_ptr + idx, mask=rs_ok, other=0.0)
        m_max = tl.max(m, axis=1)
        w = tl.exp(m - m_max[:, None]) * l_sum  # [R, S]; empty splits weigh 0
        parts = tl.load(
            part_out_ptr + idx[:, :, None] * BLOCK_D + d[None, None, :],
            mask=rs_ok[:, :, None] & (d < HEAD_DIM)[None, None, :],
            other=0.0,
        )
        total = tl.sum(w, axis=1)
        total = tl.where(total > 0.0, total, 1.0)
        result = tl.sum(w[:, :, None] * parts, axis=1) / total[:, None]
        b = r // num_q_heads
        h = r % num_q_heads
        tl.store(
            out_ptr + (b * stride_ob + h * stride_oh)[:, None] + d[None, :],
            result.to(out_ptr.dtype.element_ty),
            mask=r_ok[:, None] & (d < HEAD_DIM)[None, :],
        )

    @triton.jit(do_not_specialize=["stride_bt"])
    def _prefill_kernel(
        q_ptr,
        k_cache_ptr,
        v_cache_ptr,
        bt_ptr,
        qsl_ptr,
        seq_lens_ptr,
        out_ptr,
        scale,
        stride_qt,
        stride_qh,
        stride_ot,
        stride_oh,
        stride_kb,
        stride_ks,
        stride_kh,
        stride_vb,
        stride_vs,
        stride_vh,
        stride_bt,
        block_size,
        GROUP: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_G: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_N: tl.constexpr,
        IEEE_DOT: tl.constexpr,
    ):
        """Program (b, kv head, m tile): BLOCK_M new tokens x GROUP query heads, causal."""
        b = tl.program_id(0)
        kvh = tl.program_id(1)
        mt = tl.program_id(2)
        q_start = tl.load(qsl_ptr + b)
        q_len = tl.load(qsl_ptr + b + 1) - q_start
        ctx = tl.load(seq_lens_ptr + b)
        first = mt * BLOCK_M

        rows = tl.arange(0, BLOCK_M * BLOCK_G)
        i = first + rows // BLOCK_G  # token index within the sequence's new tokens
        g = rows % BLOCK_G
        d = tl.arange(0, BLOCK_D)
        d_ok = d < HEAD_DIM
        row_ok = (i < q_len) & (g < GROUP)
        pos = ctx - q_len + i  # the query's position in its context
        qh = kvh * GROUP + g
        tok = (q_start + i).to(tl.int64)
        q_mask = row_ok[:, None] & d_ok[None, :]
        q = tl.load(
            q_ptr + (tok * stride_qt + qh * stride_qh)[:, None] + d[None, :], mask=q_mask, other=0.0
        )

        m = tl.full([BLOCK_M * BLOCK_G], _NEG_BIG, tl.float32)
        l_sum = tl.zeros([BLOCK_M * BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_M * BLOCK_G, BLOCK_D], tl.float32)
        # Keys past the tile's last query position are invisible to all its rows.
        hi = tl.minimum(ctx, ctx - q_len + first + BLOCK_M)
        hi = tl.where(first < q_len, hi, 0)
        table = bt_ptr + b.to(tl.int64) * stride_bt
        for t0 in range(0, hi, BLOCK_N):
            t = t0 + tl.arange(0, BLOCK_N)
            t_ok = t < hi
            visible = t_ok[None, :] & (t[None, :] <= pos[:, None])  # causal
            m, l_sum, acc = _attend_tile(
                q, m, l_sum, acc, k_cache_ptr, v_cache_ptr, table, t, t_ok, visible,
                d, d_ok, kvh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                block_size, scale, IEEE_DOT,
            )  # fmt: skip

        l_safe = tl.where(l_sum > 0.0, l_sum, 1.0)
        result = acc / l_safe[:, None]
        tl.store(
            out_ptr + (tok * stride_ot + qh * stride_oh)[:, None] + d[None, :],
            result.to(out_ptr.dtype.element_ty),
            mask=q_mask,
        )


# ----------------------------------------------------------------------------- wrappers


def _check(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> int:
    """Validate shapes; return the GQA group size."""
    if triton is None:
        raise RuntimeError("triton is not installed; use the *_ref functions")
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    if q.shape[1] % num_kv_heads or q.shape[2] != head_dim:
        raise ValueError(f"q {tuple(q.shape)} does not fit cache {tuple(k_cache.shape)}")
    if k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise ValueError("cache head dim must be contiguous")
    return q.shape[1] // num_kv_heads


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    out: torch.Tensor | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Triton decode: q [B, Hq, D] over each sequence's context_lens[b] cached tokens.

    `num_splits=None` picks split-K from the batch's parallelism (enough programs to fill the
    GPU), capped by the block-table width (an upper bound on the longest context, so no
    device sync); each sequence then splits its own context into that many parts.
    """
    group = _check(q, k_cache, v_cache)
    batch, num_q_heads, head_dim = q.shape
    num_kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    if q.stride(2) != 1:
        q = q.contiguous()
    if out is None:
        out = torch.empty_like(q)
    if batch == 0:
        return out
    block_g = max(16, triton.next_power_of_2(group))  # tl.dot needs M >= 16
    block_d = max(16, triton.next_power_of_2(head_dim))  # and K >= 16
    block_n = 64 if block_d <= 128 else 32
    max_ctx = max(1, block_tables.shape[1] * block_size)
    if num_splits is None:
        by_len = triton.cdiv(max_ctx, _PARTITION_TOKENS)
        by_programs = max(1, _TARGET_PROGRAMS // (batch * num_kv_heads))
        num_splits = max(1, min(by_len, by_programs))
    num_splits = max(1, min(num_splits, triton.cdiv(max_ctx, block_n)))

    if num_splits > 1:
        part_out = torch.empty(
            (batch, num_q_heads, num_splits, block_d), dtype=torch.float32, device=q.device
        )
        part_m = torch.empty((batch, num_q_heads, num_splits), dtype=torch.float32, device=q.device)
        part_l = torch.empty_like(part_m)
    else:
        part_out = part_m = part_l = out  # unused
    _decode_kernel[(batch, num_kv_heads, num_splits)](
        q,
        k_cache,
        v_cache,
        block_tables,
        context_lens,
        out,
        part_out,
        part_m,
        part_l,
        scale,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        block_tables.stride(0),
        block_size,
        GROUP=group,
        HEAD_DIM=head_dim,
        NUM_SPLITS=num_splits,
        BLOCK_G=block_g,
        BLOCK_D=block_d,
        BLOCK_N=block_n,
        IEEE_DOT=q.dtype == torch.float32,
    )
    if num_splits > 1:
        num_rows = batch * num_q_heads
        block_s = triton.next_power_of_2(num_splits)
        block_r = max(1, min(64, 8192 // (block_s * block_d)))
        _decode_reduce_kernel[(triton.cdiv(num_rows, block_r),)](
            part_out,
            part_m,
            part_l,
            out,
            num_rows,
            num_q_heads,
            out.stride(0),
            out.stride(1),
            HEAD_DIM=head_dim,
            NUM_SPLITS=num_splits,
            BLOCK_R=block_r,
            BLOCK_S=block_s,
            BLOCK_D=block_d,
        )
    return out


def paged_prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    max_query_len: int | None = None,
) -> torch.Tensor:
    """Triton prefill: packed new tokens q [T, Hq, D] -> [T, Hq, D], causal over the context.

    Pass `max_query_len` (known on the host) to avoid a device sync that computes it.
    """
    group = _check(q, k_cache, v_cache)
    num_tokens, _, head_dim = q.shape
    num_kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    batch = seq_lens.shape[0]
    if q.stride(2) != 1:
        q = q.contiguous()
    out = torch.empty_like(q)
    if num_tokens == 0 or batch == 0:
        return out
    if max_query_len is None:
        max_query_len = int((query_start_loc[1:] - query_start_loc[:-1]).max().item())
    block_g = triton.next_power_of_2(group)
    block_d = max(16, triton.next_power_of_2(head_dim))  # tl.dot needs K >= 16
    block_m = max(1, 64 // block_g)  # rows per program = block_m * block_g (>= 16 for tl.dot)
    block_m = max(block_m, triton.cdiv(16, block_g))
    block_n = 32
    grid = (batch, num_kv_heads, triton.cdiv(max_query_len, block_m))
    _prefill_kernel[grid](
        q,
        k_cache,
        v_cache,
        block_tables,
        query_start_loc,
        seq_lens,
        out,
        scale,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        block_tables.stride(0),
        block_size,
        GROUP=group,
        HEAD_DIM=head_dim,
        BLOCK_M=block_m,
        BLOCK_G=block_g,
        BLOCK_D=block_d,
        BLOCK_N=block_n,
        IEEE_DOT=q.dtype == torch.float32,
    )
    return out
