"""The kernel tests run the Triton kernels in Triton's CPU interpreter (CI has no GPU).

On a GPU machine, `ORCA_KERNEL_TEST_DEVICE=cuda` runs the same tests compiled on the GPU:
no interpreter, and every tensor a test makes without naming a device lands on the GPU.
"""

import os

import pytest
import torch

DEVICE = os.environ.get("ORCA_KERNEL_TEST_DEVICE", "cpu")

# On the CPU, tests/conftest.py has set TRITON_INTERPRET=1 before any kernel was imported.


@pytest.fixture(autouse=True)
def force_triton(monkeypatch):
    """Route the public kernel functions to the Triton kernels (interpreted) on the CPU."""
    monkeypatch.setenv("ORCA_KERNELS_FORCE_TRITON", "1")


@pytest.fixture(autouse=True)
def kernel_device(request):
    """The device the test's tensors are made on (the default device inside the test). The
    engine tests name the device themselves (a module-level DEVICE): their HF reference
    model stays on the CPU."""
    if hasattr(request.module, "DEVICE"):
        yield DEVICE
        return
    with torch.device(DEVICE):
        yield DEVICE
