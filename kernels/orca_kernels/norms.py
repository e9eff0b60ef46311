"""Fused residual-add + RMSNorm and LayerNorm (with an optional residual add).

Both take x [..., N] and return ``(normed, new_residual)``: ``new_residual = x + residual``
(stored in the input dtype; just ``x`` when residual is None) and ``normed`` is the
normalization of ``new_residual``, computed in float32 and stored in the input dtype.
The public functions dispatch (see `dispatch.use_triton`): Triton on CUDA, the `*_ref` torch
references elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from orca_kernels.dispatch import num_warps_for, row_blocks, triton_available, use_triton

MAX_HIDDEN = 65536  # one block holds a whole row


def add_rms_norm_ref(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference of `add_rms_norm`."""
    if residual is not None:
        x = x + residual
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return normed.to(x.dtype), x


def layer_norm_ref(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference of `layer_norm`."""
    if residual is not None:
        x = x + residual
    w = weight.float() if weight is not None else None
    b = bias.float() if bias is not None else None
    normed = F.layer_norm(x.float(), (x.shape[-1],), w, b, eps)
    return normed.to(x.dtype), x


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rmsnorm(x + residual) * weight, x + residual); residual may be None."""
    if not use_triton(x):
        return add_rms_norm_ref(x, residual, weight, eps)
    return _launch(x, residual, weight, None, eps, rms=True)


def layer_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(layernorm(x + residual) * weight + bias, x + residual); residual, weight and bias may be
    None (OPT's non-affine LayerNorm has neither weight nor bias)."""
    if not use_triton(x):
        return layer_norm_ref(x, residual, weight, bias, eps)
    return _launch(x, residual, weight, bias, eps, rms=False)


def _rows(t: torch.Tensor, n: int) -> torch.Tensor:
    t2 = t.reshape(-1, n)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _launch(x, residual, weight, bias, eps, *, rms: bool):
    shape, n = x.shape, x.shape[-1]
    if n > MAX_HIDDEN:
        raise ValueError(f"hidden size {n} exceeds the kernel's limit of {MAX_HIDDEN}")
    if residual is not None and residual.shape != shape:
        raise ValueError(f"residual shape {tuple(residual.shape)} != x shape {tuple(shape)}")
    x2 = _rows(x, n)
    m = x2.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if residual is not None:
        r2 = _rows(residual, n)
        new_res = torch.empty((m, n), dtype=x.dtype, device=x.device)
    else:
        r2 = new_res = x2  # unused by the kernel
    if m == 0:
        return out.view(shape), (new_res.view(shape) if residual is not None else x)
    w = weight.contiguous() if weight is not None else x2  # dummy pointer when absent
    b = bias.contiguous() if bias is not None else x2
    block_m, block_n = row_blocks(m, n)
    grid = (triton.cdiv(m, block_m),)
    _norm_kernel[grid](
        x2, r2, w, b, out, new_res,
        m, n,
        x2.stride(0), r2.stride(0), out.stride(0), new_res.stride(0),
        eps,
        IS_RMS=rms,
        HAS_RES=residual is not None,
        HAS_W=weight is not None,
        HAS_B=bias is not None,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        num_warps=num_warps_for(block_m * block_n),
    )  # fmt: skip
    return out.view(shape), (new_res.view(shape) if residual is not None else x)


if triton_available():
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=["M"])
    def _norm_kernel(
        x_ptr, res_ptr, w_ptr, b_ptr, out_ptr, res_out_ptr,
        M, N,
        stride_x, stride_r, stride_o, stride_ro,
        eps,
        IS_RMS: tl.constexpr,
        HAS_RES: tl.constexpr,
        HAS_W: tl.constexpr,
        HAS_B: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        """BLOCK_M rows per program, each row whole in BLOCK_N (masked past N)."""
        rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        cols = tl.arange(0, BLOCK_N)
        cmask = cols < N
        mask = (rows < M)[:, None] & cmask[None, :]
        x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
        if HAS_RES:
            r = tl.load(res_ptr + rows[:, None] * stride_r + cols[None, :], mask=mask, other=0.0)
            # Round the sum to the input dtype, as the unfused add does: the stored residual
            # and the normalized value then agree exactly.
            x = (x.to(tl.float32) + r.to(tl.float32)).to(res_out_ptr.dtype.element_ty)
            tl.store(res_out_ptr + rows[:, None] * stride_ro + cols[None, :], x, mask=mask)
        x = x.to(tl.float32)
        if IS_RMS:
            var = tl.sum(x * x, axis=1) / N
            y = x * tl.rsqrt(var + eps)[:, None]
        else:
            mean = tl.sum(x, axis=1) / N
            xc = tl.where(mask, x - mean[:, None], 0.0)
            var = tl.sum(xc * xc, axis=1) / N
            y = xc * tl.rsqrt(var + eps)[:, None]
        if HAS_W:
            w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
            y = y * w[None, :]
        if HAS_B:
            b = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
            y = y + b[None, :]
        out = y.to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + rows[:, None] * stride_o + cols[None, :], out, mask=mask)
