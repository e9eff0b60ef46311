"""Elementwise MLP activations: SiLU·mul (gated MLPs) and bias + GeLU (GPT-2 / OPT style).

Computed in float32, stored in the input dtype. The public functions dispatch (see
`dispatch.use_triton`): Triton on CUDA, the `*_ref` torch references elsewhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from orca_kernels.dispatch import num_warps_for, triton_available, use_triton

_APPROXIMATE = ("tanh", "none")


def silu_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """Torch reference of `silu_mul`."""
    gate, up = x.float().chunk(2, dim=-1)
    return (F.silu(gate) * up).to(x.dtype)


def bias_gelu_ref(
    x: torch.Tensor, bias: torch.Tensor | None, approximate: str = "none"
) -> torch.Tensor:
    """Torch reference of `bias_gelu`."""
    _check_approximate(approximate)
    xf = x.float()
    if bias is not None:
        xf = xf + bias.float()
    return F.gelu(xf, approximate=approximate).to(x.dtype)


def silu_mul(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2*I] holds (gate | up) halves; returns silu(gate) * up, [..., I]."""
    if x.shape[-1] % 2:
        raise ValueError(f"silu_mul needs an even last dimension, got {x.shape[-1]}")
    if not use_triton(x):
        return silu_mul_ref(x)
    inter = x.shape[-1] // 2
    x2 = _rows(x)
    out = torch.empty((x2.shape[0], inter), dtype=x.dtype, device=x.device)
    if out.numel():
        grid, block_m, block_n = _grid(x2.shape[0], inter)
        _silu_mul_kernel[grid](
            x2, out, x2.shape[0], inter, x2.stride(0), out.stride(0),
            BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps_for(block_m * block_n),
        )  # fmt: skip
    return out.view(*x.shape[:-1], inter)


def bias_gelu(
    x: torch.Tensor, bias: torch.Tensor | None, approximate: str = "none"
) -> torch.Tensor:
    """gelu(x + bias) over x [..., N] with bias [N] (or None); `approximate` is "tanh" or
    "none" (the erf form), as in torch.nn.functional.gelu."""
    _check_approximate(approximate)
    if not use_triton(x):
        return bias_gelu_ref(x, bias, approximate)
    n = x.shape[-1]
    x2 = _rows(x)
    out = torch.empty_like(x2)
    if out.numel():
        grid, block_m, block_n = _grid(x2.shape[0], n)
        b = bias.contiguous() if bias is not None else x2  # dummy pointer when absent
        _bias_gelu_kernel[grid](
            x2, b, out, x2.shape[0], n, x2.stride(0), out.stride(0),
            HAS_BIAS=bias is not None, TANH=approximate == "tanh",
            BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps_for(block_m * block_n),
        )  # fmt: skip
    return out.view(x.shape)


def _check_approximate(approximate: str) -> None:
    if approximate not in _APPROXIMATE:
        raise ValueError(f"approximate must be one of {_APPROXIMATE}, got {approximate!r}")


def _rows(x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _grid(m: int, n: int, max_tile: int = 4096):
    """2-D grid over (row blocks, column blocks): no reduction, so columns are tiled too."""
    block_n = min(1 << max(0, (n - 1).bit_length()), 1024)
    block_m = max(1, min(1 << max(0, (m - 1).bit_length()), max_tile // block_n))
    return (triton.cdiv(m, block_m), triton.cdiv(n, block_n)), block_m, block_n


if triton_available():
    import triton
    import triton.language as tl

    # Globals read inside a jitted function must be constexpr.
    _SQRT_2_OVER_PI = tl.constexpr(math.sqrt(2.0 / math.pi))
    _INV_SQRT_2 = tl.constexpr(1.0 / math.sqrt(2.0))

    @triton.jit(do_not_specialize=["M"])
    def _silu_mul_kernel(
        x_ptr, out_ptr, M, N, stride_x, stride_o,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask = (rows < M)[:, None] & (cols < N)[None, :]
        gate_ptrs = x_ptr + rows[:, None] * stride_x + cols[None, :]
        gate = tl.load(gate_ptrs, mask=mask, other=0.0).to(tl.float32)
        up = tl.load(gate_ptrs + N, mask=mask, other=0.0).to(tl.float32)
        y = gate * tl.sigmoid(gate) * up
        out_ptrs = out_ptr + rows[:, None] * stride_o + cols[None, :]
        tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit(do_not_specialize=["M"])
    def _bias_gelu_kernel(
        x_ptr, b_ptr, out_ptr, M, N, stride_x, stride_o,
        HAS_BIAS: tl.constexpr, TANH: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        cmask = cols < N
        mask = (rows < M)[:, None] & cmask[None, :]
        x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
        x = x.to(tl.float32)
        if HAS_BIAS:
            x = x + tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        if TANH:
            inner = _SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)
            # tanh(z) = 2 * sigmoid(2z) - 1, so 0.5 * (1 + tanh(z)) = sigmoid(2z). Clamped so
            # exp never overflows (sigmoid(-80) ~ 2e-35: the product is 0 in every dtype).
            y = x * tl.sigmoid(tl.minimum(tl.maximum(2.0 * inner, -80.0), 80.0))
        else:
            y = 0.5 * x * (1.0 + tl.math.erf(x * _INV_SQRT_2))
        out_ptrs = out_ptr + rows[:, None] * stride_o + cols[None, :]
        tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=mask)
