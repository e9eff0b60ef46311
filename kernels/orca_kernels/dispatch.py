"""Choosing between a Triton kernel and its torch reference.

On CUDA the kernels run whenever Triton imports. On the CPU the references run, except in tests:
with ``ORCA_KERNELS_FORCE_TRITON=1`` and ``TRITON_INTERPRET=1`` the kernels run in Triton's CPU
interpreter. The environment is read at call time, so tests may set it after importing us.

Compiled variants: Triton compiles one variant per combination of constexprs and of
integer-argument specializations (== 1, divisible by 16) and pointer alignments. Arguments
that change with every step (row and token counts, a step's block-table width) are marked
``do_not_specialize``, so a step of any size reuses the variants the worker's warm-up
compiled; every constexpr derived from a size is a capped power of two, a short list the
warm-up covers (``orca_worker.warmup``).
"""

from __future__ import annotations

import functools
import os

import torch

FORCE_ENV = "ORCA_KERNELS_FORCE_TRITON"


@functools.cache
def triton_available() -> bool:
    """Whether `import triton` works here (checked once)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(t: torch.Tensor) -> bool:
    """True when the Triton kernel should handle `t`: on CUDA when Triton imports; on the CPU
    only when ORCA_KERNELS_FORCE_TRITON=1 and TRITON_INTERPRET=1 are both set."""
    if not triton_available():
        return False
    if t.is_cuda:
        return True
    return (
        t.device.type == "cpu"
        and os.environ.get(FORCE_ENV) == "1"
        and os.environ.get("TRITON_INTERPRET") == "1"
    )


def row_blocks(n_rows: int, n_cols: int, max_tile: int = 4096) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) for a row-wise kernel: the whole row in one block (a power of two),
    and as many rows per program as keep the tile within `max_tile` elements."""
    block_n = _next_pow2(n_cols)
    block_m = max(1, min(_next_pow2(max(n_rows, 1)), max_tile // block_n))
    return block_m, block_n


def num_warps_for(tile: int) -> int:
    """A warp count that grows with the tile (1 to 16)."""
    return max(1, min(16, tile // 512))


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())
