"""The kernel tests run the Triton kernels in Triton's CPU interpreter (CI has no GPU)."""

import os

import pytest

# Set when pytest loads this file, before any test module imports triton: triton reads it
# when the kernels are decorated.
os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(autouse=True)
def force_triton(monkeypatch):
    """Route the public kernel functions to the Triton kernels (interpreted) on the CPU."""
    monkeypatch.setenv("ORCA_KERNELS_FORCE_TRITON", "1")
