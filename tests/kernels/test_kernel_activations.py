"""SiLU·mul and bias + GeLU kernels against their torch references."""

import pytest
import torch

pytest.importorskip("triton")

import torch.nn.functional as F
from kernel_testing import DTYPES, close

from orca_kernels.activations import bias_gelu, bias_gelu_ref, silu_mul, silu_mul_ref

SHAPES = [(1, 7), (5, 100), (9, 257), (2, 3, 64)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_silu_mul(shape, dtype):
    g = torch.Generator(torch.get_default_device()).manual_seed(0)
    x = torch.randn(*shape[:-1], 2 * shape[-1], generator=g).to(dtype)
    out = silu_mul(x)
    assert out.shape == shape
    close(out, silu_mul_ref(x), dtype)


def test_silu_mul_large_intermediate_spans_column_blocks():
    x = torch.randn(
        3, 2 * 1500, generator=torch.Generator(torch.get_default_device()).manual_seed(1)
    )
    close(silu_mul(x), silu_mul_ref(x), torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_gelu(shape, dtype, approximate, with_bias):
    g = torch.Generator(torch.get_default_device()).manual_seed(2)
    x = (torch.randn(shape, generator=g) * 3).to(dtype)
    b = torch.randn(shape[-1], generator=g).to(dtype) if with_bias else None
    close(bias_gelu(x, b, approximate), bias_gelu_ref(x, b, approximate), dtype)


def test_references_match_torch():
    g = torch.Generator(torch.get_default_device()).manual_seed(3)
    x, b = torch.randn(4, 20, generator=g), torch.randn(10, generator=g)
    torch.testing.assert_close(silu_mul_ref(x), F.silu(x[:, :10]) * x[:, 10:])
    torch.testing.assert_close(
        bias_gelu_ref(x[:, :10], b, "tanh"), F.gelu(x[:, :10] + b, approximate="tanh")
    )


def test_bad_arguments():
    with pytest.raises(ValueError):
        bias_gelu(torch.zeros(2, 4), None, "quick")
    with pytest.raises(ValueError):
        silu_mul(torch.zeros(2, 5))
