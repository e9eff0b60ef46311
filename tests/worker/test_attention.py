"""The torch reference attention over the paged cache, against dense causal attention."""

from __future__ import annotations

import pytest
import torch

from orca_worker.attention import AttentionMetadata, HostLayout, TorchAttentionBackend

BLOCK_SIZE = 4
NUM_BLOCKS = 24
HEADS, KV_HEADS, HEAD_DIM = 4, 2, 8


def _dense(q, k, v, start, window):
    """Plain causal attention of q (positions start..) over k/v (positions 0..)."""
    k = k.repeat_interleave(HEADS // KV_HEADS, dim=1)
    v = v.repeat_interleave(HEADS // KV_HEADS, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / HEAD_DIM**0.5
    qpos = torch.arange(start, start + q.shape[0])[:, None]
    kpos = torch.arange(k.shape[0])[None, :]
    mask = kpos <= qpos
    if window is not None:
        mask &= kpos > qpos - window
    probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    return torch.einsum("hqk,khd->qhd", probs, v)


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("decode_chunk_tokens", [1 << 16, 4])  # one batch, or one per seq
def test_mixed_prefill_chunks_and_decodes(window, decode_chunk_tokens):
    """A fresh prompt, a later chunk over cached context, and decodes of different lengths."""
    gen = torch.Generator().manual_seed(0)
    starts, lens = [0, 6, 13, 3, 9], [7, 5, 1, 1, 1]
    perm = torch.randperm(NUM_BLOCKS, generator=gen).tolist()
    tables = [perm[0:2], perm[2:5], perm[5:9], perm[9:10], perm[10:13]]
    k_cache = torch.zeros(NUM_BLOCKS, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    v_cache = torch.zeros_like(k_cache)
    full_k = [
        torch.randn(s + n, KV_HEADS, HEAD_DIM, generator=gen)
        for s, n in zip(starts, lens, strict=True)
    ]
    full_v = [
        torch.randn(s + n, KV_HEADS, HEAD_DIM, generator=gen)
        for s, n in zip(starts, lens, strict=True)
    ]
    for table, k, v, s in zip(tables, full_k, full_v, starts, strict=True):  # cached history
        for pos in range(s):
            k_cache[table[pos // BLOCK_SIZE], pos % BLOCK_SIZE] = k[pos]
            v_cache[table[pos // BLOCK_SIZE], pos % BLOCK_SIZE] = v[pos]
    positions = torch.cat([torch.arange(s, s + n) for s, n in zip(starts, lens, strict=True)])
    assert HostLayout.compute(starts, lens, tables, BLOCK_SIZE).positions.tolist() == (
        positions.tolist()
    )
    meta = AttentionMetadata.build(starts, lens, tables, BLOCK_SIZE, torch.device("cpu"))
    expected_slots = [
        t[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE
        for t, s, n in zip(tables, starts, lens, strict=True)
        for p in range(s, s + n)
    ]
    assert meta.slot_mapping.tolist() == expected_slots
    assert meta.context_lens_host == [7, 11, 14, 4, 10]
    assert meta.decode_seqs_host == [2, 3, 4]

    q = torch.randn(sum(lens), HEADS, HEAD_DIM, generator=gen)
    new_k = torch.cat([k[s:] for k, s in zip(full_k, starts, strict=True)])
    new_v = torch.cat([v[s:] for v, s in zip(full_v, starts, strict=True)])
    backend = TorchAttentionBackend()
    backend.decode_gather_tokens = decode_chunk_tokens
    out = backend.forward(q, new_k, new_v, k_cache, v_cache, meta, HEAD_DIM**-0.5, window)
    offset = 0
    for k, v, s, n in zip(full_k, full_v, starts, lens, strict=True):
        expected = _dense(q[offset : offset + n], k, v, s, window)
        torch.testing.assert_close(out[offset : offset + n], expected)
        offset += n
    # The new tokens' K/V are now in the cache, at their slots.
    torch.testing.assert_close(k_cache.view(-1, KV_HEADS, HEAD_DIM)[meta.slot_mapping], new_k)
