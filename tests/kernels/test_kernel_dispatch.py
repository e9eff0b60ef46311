"""When the public kernel functions pick Triton over the torch reference."""

# TRITON_INTERPRET must be set before triton is first imported (triton reads it when the
# kernels are decorated): the kernels then run in its CPU interpreter. Hence code before imports.
import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from orca_kernels.dispatch import use_triton  # noqa: E402


def test_cpu_default_is_reference(monkeypatch):
    monkeypatch.delenv("ORCA_KERNELS_FORCE_TRITON", raising=False)
    assert not use_triton(torch.zeros(2))


def test_force_needs_interpreter_and_is_read_at_call_time(monkeypatch):
    monkeypatch.setenv("ORCA_KERNELS_FORCE_TRITON", "1")
    assert use_triton(torch.zeros(2))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not use_triton(torch.zeros(2))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("ORCA_KERNELS_FORCE_TRITON", "0")
    assert not use_triton(torch.zeros(2))
