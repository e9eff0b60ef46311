"""Moving a step's host-built index arrays to the device: one copy per dtype, from pinned
buffers reused across steps.

A step's inputs (token ids, positions, KV slots, block tables, ...) are a handful of small
integer arrays. Sent one by one, each is a pageable host-to-device copy with its own
launch and sync; packed into one pinned buffer per dtype, they are one asynchronous copy
each. On the CPU the arrays are handed over as tensors, with no copy at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# Each array starts on a 16-byte boundary of the packed buffer. Triton specializes a kernel
# on whether each pointer argument is 16-byte aligned: arrays at arbitrary offsets would
# flip that from step to step and compile a new kernel variant each time it changes.
ALIGN_BYTES = 16


def packed_offsets(sizes: Sequence[int], itemsize: int) -> tuple[list[int], int]:
    """Where each array starts in the packed buffer (in elements, every start 16-byte
    aligned) and the buffer length they need."""
    step = max(1, ALIGN_BYTES // itemsize)
    offsets, end = [], 0
    for size in sizes:
        offsets.append(end)
        end += -(-size // step) * step
    return offsets, end


class HostStaging:
    """Uploads lists of same-dtype numpy arrays to `device` (see `upload`)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._cuda = device.type == "cuda"
        self._buffers: dict[np.dtype, torch.Tensor] = {}
        # Marks the last copy out of each buffer: a buffer is rewritten only once it is done.
        self._copied: dict[np.dtype, torch.cuda.Event] = {}

    def upload(self, arrays: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """The arrays (all of one dtype) as tensors on the device, same shapes; on CUDA one
        asynchronous copy out of a pinned buffer, which this method reuses next time."""
        if not self._cuda:
            return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
        dtype = arrays[0].dtype
        sizes = [a.size for a in arrays]
        offsets, total = packed_offsets(sizes, dtype.itemsize)
        buffer = self._buffer(dtype, total)
        host = buffer[:total].numpy()
        for array, size, offset in zip(arrays, sizes, offsets, strict=True):
            host[offset : offset + size] = array.reshape(-1)
        device_flat = buffer[:total].to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._copied[dtype] = event
        return [
            device_flat[offset : offset + size].view(array.shape)
            for array, size, offset in zip(arrays, sizes, offsets, strict=True)
        ]

    def _buffer(self, dtype: np.dtype, size: int) -> torch.Tensor:
        """The pinned buffer for `dtype`, at least `size` long, once its last copy is done."""
        event = self._copied.get(dtype)
        if event is not None:
            event.synchronize()
        buffer = self._buffers.get(dtype)
        if buffer is None or buffer.numel() < size:
            capacity = max(size, 2 * (buffer.numel() if buffer is not None else 1024))
            torch_dtype = torch.from_numpy(np.empty(0, dtype)).dtype
            buffer = torch.empty(capacity, dtype=torch_dtype, pin_memory=True)
            self._buffers[dtype] = buffer
        return buffer
