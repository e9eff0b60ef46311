"""The Triton KV store against its torch reference, on the CPU."""

import pytest
import torch

pytest.importorskip("triton")

from orca_kernels.kv_store import store_kv, store_kv_ref


@pytest.mark.parametrize("block_size", [4, 16])
@pytest.mark.parametrize(("num_heads", "head_dim"), [(1, 32), (2, 64), (3, 24)])
def test_store_kv_matches_reference(block_size, num_heads, head_dim):
    gen = torch.Generator(torch.get_default_device()).manual_seed(
        block_size * 100 + num_heads * 10 + head_dim
    )
    num_blocks, num_tokens = 8, 13
    k = torch.randn(num_tokens, num_heads, head_dim, generator=gen)
    v = torch.randn(num_tokens, num_heads, head_dim, generator=gen)
    # Distinct slots in random order; two tokens are padding (negative slot).
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    slots[3] = -1
    slots[9] = -1
    cache_shape = (num_blocks, block_size, num_heads, head_dim)
    k_ref, v_ref = torch.randn(cache_shape, generator=gen), torch.randn(cache_shape, generator=gen)
    k_out, v_out = k_ref.clone(), v_ref.clone()

    store_kv_ref(k, v, k_ref, v_ref, slots)
    store_kv(k, v, k_out, v_out, slots)

    torch.testing.assert_close(k_out, k_ref, rtol=0, atol=0)
    torch.testing.assert_close(v_out, v_ref, rtol=0, atol=0)
    # The reference itself wrote where it should and skipped the padding.
    for t, slot in enumerate(slots.tolist()):
        if slot >= 0:
            assert torch.equal(k_ref[slot // block_size, slot % block_size], k[t])


def test_store_kv_casts_and_handles_strided_input():
    gen = torch.Generator(torch.get_default_device()).manual_seed(7)
    kv = torch.randn(5, 2, 2, 32, generator=gen)  # k and v interleaved: strided views
    k, v = kv[:, 0], kv[:, 1]
    slots = torch.tensor([0, 5, 6, 11, -3], dtype=torch.int32)
    k_ref = torch.zeros(3, 4, 2, 32, dtype=torch.float16)
    v_ref = torch.zeros_like(k_ref)
    k_out, v_out = k_ref.clone(), v_ref.clone()
    store_kv_ref(k, v, k_ref, v_ref, slots)
    store_kv(k, v, k_out, v_out, slots)
    assert torch.equal(k_out, k_ref) and torch.equal(v_out, v_ref)
    assert k_out.view(-1, 2, 32)[12:].abs().sum() == 0  # slot 12+ untouched


def test_store_kv_no_tokens():
    cache = torch.zeros(2, 4, 1, 32)
    empty = torch.zeros(0, 1, 32)
    store_kv(empty, empty, cache, cache.clone(), torch.zeros(0, dtype=torch.long))
    assert cache.abs().sum() == 0
