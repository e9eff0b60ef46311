"""Paged decode and prefill attention kernels against their torch references, on the CPU."""

import math

import pytest
import torch

pytest.importorskip("triton")

from orca_kernels.kv_store import store_kv_ref
from orca_kernels.paged_attention import (
    paged_decode_attention,
    paged_decode_attention_ref,
    paged_prefill_attention,
    paged_prefill_attention_ref,
)

NUM_KV_HEADS = 2
TOL = {"rtol": 1e-4, "atol": 1e-4}


def _paged_cache(context_lens, block_size, head_dim, seed, num_kv_heads=NUM_KV_HEADS):
    """Random caches and scattered block tables holding each sequence's context."""
    gen = torch.Generator(torch.get_default_device()).manual_seed(seed)
    needed = [-(-c // block_size) for c in context_lens]
    num_blocks = sum(needed) + 3  # spare blocks that nobody should read
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache, v_cache = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    order = torch.randperm(num_blocks, generator=gen).tolist()
    width = max(needed)
    tables = torch.zeros(len(context_lens), width, dtype=torch.int32)
    for b, n in enumerate(needed):
        tables[b, :n] = torch.tensor(order[:n], dtype=torch.int32)
        order = order[n:]
    return k_cache, v_cache, tables, gen


@pytest.mark.parametrize("block_size", [4, 16])
@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("head_dim", [32, 64])
def test_decode_matches_reference(head_dim, group, block_size):
    # Mid-block ends, exact block boundaries (16, 32 for both block sizes) and a 1-token context.
    context_lens = [1, 7, 16, 32, 45]
    k_cache, v_cache, tables, gen = _paged_cache(context_lens, block_size, head_dim, seed=group)
    q = torch.randn(len(context_lens), NUM_KV_HEADS * group, head_dim, generator=gen)
    lens = torch.tensor(context_lens, dtype=torch.int32)
    scale = 1 / math.sqrt(head_dim)
    expected = paged_decode_attention_ref(q, k_cache, v_cache, tables, lens, scale)
    got = paged_decode_attention(q, k_cache, v_cache, tables, lens, scale, num_splits=1)
    torch.testing.assert_close(got, expected, **TOL)


@pytest.mark.parametrize("num_splits", [None, 3, 8])
def test_decode_split_k_long_context(num_splits):
    context_lens = [300, 5, 129]
    block_size, head_dim, group = 16, 32, 2
    k_cache, v_cache, tables, gen = _paged_cache(context_lens, block_size, head_dim, seed=11)
    q = torch.randn(len(context_lens), NUM_KV_HEADS * group, head_dim, generator=gen)
    lens = torch.tensor(context_lens, dtype=torch.int32)
    expected = paged_decode_attention_ref(q, k_cache, v_cache, tables, lens, 0.2)
    out = torch.full_like(q, float("nan"))
    got = paged_decode_attention(
        q, k_cache, v_cache, tables, lens, 0.2, out=out, num_splits=num_splits
    )
    assert got is out
    torch.testing.assert_close(got, expected, **TOL)


def test_decode_half_precision():
    context_lens = [9, 20]
    k_cache, v_cache, tables, gen = _paged_cache(context_lens, 4, 64, seed=3)
    k_cache, v_cache = k_cache.half(), v_cache.half()
    q = torch.randn(2, NUM_KV_HEADS * 2, 64, generator=gen).half()
    lens = torch.tensor(context_lens, dtype=torch.int32)
    expected = paged_decode_attention_ref(q, k_cache, v_cache, tables, lens, 0.125)
    got = paged_decode_attention(q, k_cache, v_cache, tables, lens, 0.125, num_splits=2)
    torch.testing.assert_close(got, expected, rtol=2e-3, atol=2e-3)


def _prefill_case(prefixes, q_lens, block_size, head_dim, group, seed):
    """Caches whose first `prefix` positions are cached context; new K/V stored like a step."""
    context_lens = [p + n for p, n in zip(prefixes, q_lens, strict=True)]
    k_cache, v_cache, tables, gen = _paged_cache(context_lens, block_size, head_dim, seed)
    num_tokens = sum(q_lens)
    k = torch.randn(num_tokens, NUM_KV_HEADS, head_dim, generator=gen)
    v = torch.randn(num_tokens, NUM_KV_HEADS, head_dim, generator=gen)
    slots = []
    for b, (p, n) in enumerate(zip(prefixes, q_lens, strict=True)):
        for pos in range(p, p + n):
            slots.append(int(tables[b, pos // block_size]) * block_size + pos % block_size)
    store_kv_ref(k, v, k_cache, v_cache, torch.tensor(slots))
    q = torch.randn(num_tokens, NUM_KV_HEADS * group, head_dim, generator=gen)
    starts = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    lens = torch.tensor(context_lens, dtype=torch.int32)
    return q, k_cache, v_cache, tables, starts, lens


@pytest.mark.parametrize("block_size", [4, 16])
@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("head_dim", [32, 64])
def test_prefill_matches_reference(head_dim, group, block_size):
    # Fresh prompt, prefix-cache hit ending on a block boundary, chunk after a mid-block
    # prefix, and a decode-like single token.
    prefixes = [0, 16, 5, 30]
    q_lens = [19, 7, 11, 1]
    q, k_cache, v_cache, tables, starts, lens = _prefill_case(
        prefixes, q_lens, block_size, head_dim, group, seed=group + head_dim
    )
    scale = 1 / math.sqrt(head_dim)
    expected = paged_prefill_attention_ref(q, k_cache, v_cache, tables, starts, lens, scale)
    got = paged_prefill_attention(q, k_cache, v_cache, tables, starts, lens, scale)
    torch.testing.assert_close(got, expected, **TOL)


def test_prefill_reference_is_causal_attention():
    """The reference equals plain causal attention when the whole prompt is new."""
    q, k_cache, v_cache, tables, starts, lens = _prefill_case([0], [10], 4, 32, 1, seed=5)
    k = k_cache[tables[0].long()].flatten(0, 1)[:10]
    v = v_cache[tables[0].long()].flatten(0, 1)[:10]
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True, scale=0.3
    ).transpose(0, 1)
    expected = paged_prefill_attention_ref(q, k_cache, v_cache, tables, starts, lens, 0.3)
    torch.testing.assert_close(expected, sdpa, **TOL)


def test_prefill_long_chunk_after_prefix():
    q, k_cache, v_cache, tables, starts, lens = _prefill_case([200, 0], [100, 3], 16, 32, 2, 9)
    expected = paged_prefill_attention_ref(q, k_cache, v_cache, tables, starts, lens, 0.2)
    got = paged_prefill_attention(q, k_cache, v_cache, tables, starts, lens, 0.2, max_query_len=100)
    torch.testing.assert_close(got, expected, **TOL)


def test_decode_reference_matches_prefill_reference():
    """A one-token prefill is a decode: the two references agree."""
    q, k_cache, v_cache, tables, starts, lens = _prefill_case([4, 12], [1, 1], 4, 32, 2, seed=8)
    decode = paged_decode_attention_ref(q, k_cache, v_cache, tables, lens, 0.25)
    prefill = paged_prefill_attention_ref(q, k_cache, v_cache, tables, starts, lens, 0.25)
    torch.testing.assert_close(decode, prefill, **TOL)
