"""When the public kernel functions pick Triton over the torch reference."""

import pytest
import torch

pytest.importorskip("triton")

from orca_kernels.dispatch import use_triton


def test_cpu_default_is_reference(monkeypatch):
    monkeypatch.delenv("ORCA_KERNELS_FORCE_TRITON", raising=False)
    assert not use_triton(torch.zeros(2, device="cpu"))


def test_force_needs_interpreter_and_is_read_at_call_time(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # set by conftest on the CPU, not on a GPU
    monkeypatch.setenv("ORCA_KERNELS_FORCE_TRITON", "1")
    assert use_triton(torch.zeros(2, device="cpu"))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not use_triton(torch.zeros(2, device="cpu"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("ORCA_KERNELS_FORCE_TRITON", "0")
    assert not use_triton(torch.zeros(2, device="cpu"))
