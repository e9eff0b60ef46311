"""Tolerances and the comparison shared by the elementwise kernel tests."""

import torch

# The interpreter truncates float32 -> bfloat16 (torch rounds), so bf16 may differ by ~2 ulp.
TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}
DTYPES = list(TOL)


def close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """Same dtype and shape, and values within the dtype's tolerance."""
    assert actual.dtype == expected.dtype == dtype
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual.float(), expected.float(), **TOL[dtype])
