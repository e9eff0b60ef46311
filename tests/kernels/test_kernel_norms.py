"""Fused add + RMSNorm and LayerNorm kernels against their torch references."""

import pytest
import torch

pytest.importorskip("triton")

from kernel_testing import DTYPES, close

from orca_kernels.dispatch import use_triton
from orca_kernels.norms import add_rms_norm, add_rms_norm_ref, layer_norm, layer_norm_ref

SHAPES = [(1, 7), (5, 100), (13, 257), (2, 3, 64)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_residual", [True, False])
def test_add_rms_norm(shape, dtype, with_residual):
    g = torch.Generator(torch.get_default_device()).manual_seed(0)
    x = torch.randn(shape, generator=g).to(dtype)
    res = torch.randn(shape, generator=g).to(dtype) if with_residual else None
    w = torch.randn(shape[-1], generator=g).to(dtype)
    assert use_triton(x)
    out, new_res = add_rms_norm(x, res, w, 1e-6)
    ref_out, ref_res = add_rms_norm_ref(x, res, w, 1e-6)
    close(out, ref_out, dtype)
    close(new_res, ref_res, dtype)
    if not with_residual:
        assert new_res is x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm(shape, dtype, with_residual, affine):
    g = torch.Generator(torch.get_default_device()).manual_seed(1)
    x = (torch.randn(shape, generator=g) * 3 + 1).to(dtype)
    res = torch.randn(shape, generator=g).to(dtype) if with_residual else None
    w = torch.randn(shape[-1], generator=g).to(dtype) if affine else None
    b = torch.randn(shape[-1], generator=g).to(dtype) if affine else None
    out, new_res = layer_norm(x, res, w, b, 1e-5)
    ref_out, ref_res = layer_norm_ref(x, res, w, b, 1e-5)
    close(out, ref_out, dtype)
    close(new_res, ref_res, dtype)


def test_non_contiguous_rows_and_float32_weight():
    g = torch.Generator(torch.get_default_device()).manual_seed(2)
    x = torch.randn(6, 2 * 33, generator=g, dtype=torch.float16)[:, :33]  # row stride 66
    w = torch.randn(33, generator=g)
    out, _ = add_rms_norm(x, None, w, 1e-6)
    close(out, add_rms_norm_ref(x, None, w, 1e-6)[0], torch.float16)


def test_references_match_plain_formulas():
    g = torch.Generator(torch.get_default_device()).manual_seed(3)
    x, r = torch.randn(4, 10, generator=g), torch.randn(4, 10, generator=g)
    w, b = torch.randn(10, generator=g), torch.randn(10, generator=g)
    h = x + r
    rms = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    torch.testing.assert_close(add_rms_norm_ref(x, r, w, 1e-6)[0], rms)
    mean, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
    ln = (h - mean) / torch.sqrt(var + 1e-5) * w + b
    torch.testing.assert_close(layer_norm_ref(x, r, w, b, 1e-5)[0], ln)


def test_cpu_uses_reference_without_force(monkeypatch):
    monkeypatch.delenv("ORCA_KERNELS_FORCE_TRITON")
    assert not use_triton(torch.zeros(1, device="cpu"))
