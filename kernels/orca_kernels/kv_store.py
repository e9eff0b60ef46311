"""KV store: write a step's new K/V rows into the paged caches.

Caches are [num_blocks, block_size, num_kv_heads, head_dim]; `slot_mapping[t]` is token t's
flat slot (block = slot // block_size, offset = slot % block_size). Negative slots mark
padding tokens and are skipped. `store_kv_ref` is the torch reference with the same signature.
"""

from __future__ import annotations

import torch

try:  # Triton is optional: on CPU the engine uses the reference.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None
    tl = None


def store_kv_ref(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Torch reference: k/v [T, Hkv, D] into caches [blocks, block_size, Hkv, D] in place."""
    block_size = k_cache.shape[1]
    slots = slot_mapping.long()
    keep = slots >= 0
    slots = slots[keep]
    blocks, offsets = slots // block_size, slots % block_size
    k_cache[blocks, offsets] = k[keep].to(k_cache.dtype)
    v_cache[blocks, offsets] = v[keep].to(v_cache.dtype)


if triton is not None:

    @triton.jit(do_not_specialize=["num_tokens"])
    def _store_kv_kernel(
        k_ptr,
        v_ptr,
        k_cache_ptr,
        v_cache_ptr,
        slot_ptr,
        num_tokens,
        stride_kt,
        stride_kh,
        stride_vt,
        stride_vh,
        stride_cb,
        stride_cs,
        stride_ch,
        stride_vcb,
        stride_vcs,
        stride_vch,
        block_size,
        HEAD_DIM: tl.constexpr,
        NUM_HEADS: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_H: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """One program copies BLOCK_T tokens x all kv heads (head dim contiguous)."""
        pid = tl.program_id(0)
        tok = pid * BLOCK_T + tl.arange(0, BLOCK_T)
        heads = tl.arange(0, BLOCK_H)
        dims = tl.arange(0, BLOCK_D)
        tok_ok = tok < num_tokens
        slot = tl.load(slot_ptr + tok, mask=tok_ok, other=-1).to(tl.int64)
        row_ok = tok_ok & (slot >= 0)
        safe = tl.where(row_ok, slot, 0)
        block = safe // block_size
        offset = safe % block_size
        mask = (
            row_ok[:, None, None]
            & (heads < NUM_HEADS)[None, :, None]
            & (dims < HEAD_DIM)[None, None, :]
        )
        tok64 = tok.to(tl.int64)
        src_k = k_ptr + tok64[:, None, None] * stride_kt + heads[None, :, None] * stride_kh
        src_v = v_ptr + tok64[:, None, None] * stride_vt + heads[None, :, None] * stride_vh
        dst_k = (
            k_cache_ptr
            + (block * stride_cb + offset * stride_cs)[:, None, None]
            + heads[None, :, None] * stride_ch
        )
        dst_v = (
            v_cache_ptr
            + (block * stride_vcb + offset * stride_vcs)[:, None, None]
            + heads[None, :, None] * stride_vch
        )
        kk = tl.load(src_k + dims[None, None, :], mask=mask)
        vv = tl.load(src_v + dims[None, None, :], mask=mask)
        tl.store(dst_k + dims[None, None, :], kk.to(k_cache_ptr.dtype.element_ty), mask=mask)
        tl.store(dst_v + dims[None, None, :], vv.to(v_cache_ptr.dtype.element_ty), mask=mask)


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Triton version of `store_kv_ref` (same signature, writes the caches in place)."""
    if triton is None:
        raise RuntimeError("triton is not installed; use store_kv_ref")
    num_tokens, num_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    assert k_cache.stride(3) == 1 and v_cache.stride(3) == 1, "cache head dim must be contiguous"
    if k.stride(2) != 1:
        k = k.contiguous()
    if v.stride(2) != 1:
        v = v.contiguous()
    block_h = triton.next_power_of_2(num_heads)
    block_d = triton.next_power_of_2(head_dim)
    # Enough tokens per program that the interpreter stays fast, few enough for registers.
    block_t = max(1, min(64, 4096 // (block_h * block_d)))
    grid = (triton.cdiv(num_tokens, block_t),)
    _store_kv_kernel[grid](
        k,
        v,
        k_cache,
        v_cache,
        slot_mapping,
        num_tokens,
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        k_cache.shape[1],
        HEAD_DIM=head_dim,
        NUM_HEADS=num_heads,
        BLOCK_T=block_t,
        BLOCK_H=block_h,
        BLOCK_D=block_d,
    )
