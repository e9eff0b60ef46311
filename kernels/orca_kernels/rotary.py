"""Rotary position embedding, applied IN PLACE to q and k (which are also returned).

q [T, Hq, D] and k [T, Hkv, D] (any strides: views split from a fused qkv are fine);
positions [T] (integer); cos_sin_cache [max_pos, R] holds (cos | sin) halves of R/2 each, where
R = rotary_dim <= D (the first R features of each head rotate; the rest are left alone).
Layouts: ``is_neox=True`` pairs feature i with i + R/2 (rotate-half, Llama / NeoX);
``is_neox=False`` pairs 2i with 2i+1 (GPT-J interleaved). Math in float32, stored in the
dtype of q / k. The public function dispatches (see `dispatch.use_triton`).
"""

from __future__ import annotations

import torch

from orca_kernels.dispatch import triton_available, use_triton


def apply_rotary_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference of `apply_rotary` (also in place)."""
    _check(q, k, cos_sin_cache)
    cs = cos_sin_cache[positions.long()].float()  # [T, R]
    half = cos_sin_cache.shape[-1] // 2
    cos, sin = cs[:, None, :half], cs[:, None, half:]
    for x in (q, k):
        rot = x[..., : 2 * half].float()
        if is_neox:
            x1, x2 = rot[..., :half], rot[..., half:]
        else:
            x1, x2 = rot[..., 0::2], rot[..., 1::2]
        o1, o2 = x1 * cos - x2 * sin, x2 * cos + x1 * sin
        out = torch.cat((o1, o2), -1) if is_neox else torch.stack((o1, o2), -1).flatten(-2)
        x[..., : 2 * half] = out.to(x.dtype)
    return q, k


def apply_rotary(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k in place by their tokens' positions; returns (q, k)."""
    if not use_triton(q):
        return apply_rotary_ref(q, k, positions, cos_sin_cache, is_neox)
    _check(q, k, cos_sin_cache)
    t = q.shape[0]
    if t == 0:
        return q, k
    half = cos_sin_cache.shape[-1] // 2
    cache = cos_sin_cache if cos_sin_cache.stride(-1) == 1 else cos_sin_cache.contiguous()
    pos = positions.contiguous()
    block_r = 1 << max(0, (half - 1).bit_length())
    block_t = max(1, min(1 << max(0, (t - 1).bit_length()), 2048 // block_r))
    for x in (q, k):
        grid = (triton.cdiv(t, block_t), x.shape[1])
        _rotary_kernel[grid](
            x, pos, cache, t,
            x.stride(0), x.stride(1), x.stride(2), cache.stride(0),
            half,
            IS_NEOX=is_neox, BLOCK_T=block_t, BLOCK_R=block_r,
            num_warps=max(1, min(8, block_t * block_r // 512)),
        )  # fmt: skip
    return q, k


def _check(q: torch.Tensor, k: torch.Tensor, cache: torch.Tensor) -> None:
    if q.dim() != 3 or k.dim() != 3 or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must be [T, H, D] alike")
    rot = cache.shape[-1]
    if rot % 2 or rot > q.shape[2]:
        raise ValueError(f"rotary dim {rot} must be even and <= head dim {q.shape[2]}")


if triton_available():
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=["T"])
    def _rotary_kernel(
        x_ptr, pos_ptr, cache_ptr, T,
        stride_t, stride_h, stride_d, stride_c,
        HALF,
        IS_NEOX: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr,
    ):  # fmt: skip
        """BLOCK_T tokens of one head per program; BLOCK_R covers the R/2 rotation pairs."""
        toks = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
        head = tl.program_id(1).to(tl.int64)
        r = tl.arange(0, BLOCK_R)
        tmask = toks < T
        mask = tmask[:, None] & (r < HALF)[None, :]
        pos = tl.load(pos_ptr + toks, mask=tmask, other=0).to(tl.int64)
        cos_ptrs = cache_ptr + pos[:, None] * stride_c + r[None, :]
        cos = tl.load(cos_ptrs, mask=mask, other=0.0).to(tl.float32)
        sin = tl.load(cos_ptrs + HALF, mask=mask, other=0.0).to(tl.float32)
        if IS_NEOX:
            i1 = r
            i2 = r + HALF
        else:
            i1 = 2 * r
            i2 = 2 * r + 1
        base = x_ptr + toks[:, None] * stride_t + head * stride_h
        p1 = base + i1[None, :] * stride_d
        p2 = base + i2[None, :] * stride_d
        x1 = tl.load(p1, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(p2, mask=mask, other=0.0).to(tl.float32)
        dtype = x_ptr.dtype.element_ty
        tl.store(p1, (x1 * cos - x2 * sin).to(dtype), mask=mask)
        tl.store(p2, (x2 * cos + x1 * sin).to(dtype), mask=mask)
