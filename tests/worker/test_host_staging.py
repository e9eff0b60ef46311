"""HostStaging: a step's index arrays reach the device intact, in their shapes, through
reused buffers (CUDA half runs on a GPU machine only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from orca_worker.host_staging import HostStaging, packed_offsets


def _arrays(seed: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.integers(0, 1000, size=n, dtype=np.int64),
        rng.integers(0, 1000, size=(3, n), dtype=np.int64),
        np.zeros(0, dtype=np.int64),
    ]


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs CUDA"))],
)  # fmt: skip
def test_uploads_keep_values_and_shapes_across_reuse(device):
    staging = HostStaging(torch.device(device))
    kept = []
    for seed, n in ((0, 5), (1, 5000), (2, 7)):  # grows the buffer, then reuses it
        arrays = _arrays(seed, n)
        tensors = staging.upload(arrays)
        if device == "cuda":  # views into one device copy, each 16-byte aligned
            assert all(t.data_ptr() % 16 == 0 for t in tensors)
        kept.append((arrays, tensors))
    for arrays, tensors in kept:  # earlier uploads stay valid after the buffer is reused
        assert [t.device.type for t in tensors] == [device] * 3
        for array, tensor in zip(arrays, tensors, strict=True):
            assert tuple(tensor.shape) == array.shape
            assert tensor.cpu().numpy().tolist() == array.tolist()
    int32 = staging.upload([np.arange(4, dtype=np.int32).reshape(2, 2)])[0]
    assert int32.dtype == torch.int32 and int32.cpu().tolist() == [[0, 1], [2, 3]]


@pytest.mark.parametrize("itemsize", [4, 8])
def test_packed_arrays_start_16_byte_aligned(itemsize):
    """Triton specializes kernels on pointer alignment: every packed array must start on a
    16-byte boundary whatever the sizes before it, or kernels recompile from step to step."""
    sizes = [3, 0, 5, 1, 16, 7]
    offsets, total = packed_offsets(sizes, itemsize)
    assert all(o * itemsize % 16 == 0 for o in offsets)
    ends = [o + s for o, s in zip(offsets, sizes, strict=True)]
    assert all(end <= nxt for end, nxt in zip(ends, offsets[1:], strict=False))  # no overlap
    assert total >= ends[-1] and total * itemsize % 16 == 0
