"""Paged attention through the Triton kernels of `orca_kernels` (opt in: kernels="triton").

One `store_kv` launch writes the step's new K/V; one `paged_prefill_attention` launch attends
every sequence of the step, prefill chunks and one-token decodes alike (a decode is a prefill
row of length one). Decode-only steps also take it: on an H100 it beat
`paged_decode_attention` (whose dot products run on CUDA cores, not tensor cores) by about
2x in whole-trace throughput (docs/benchmarks.md). The kernels have no sliding window, so windowed layers, and tensors the
kernels should not handle here (see `orca_kernels.dispatch.use_triton`: CPU tensors outside
the interpreter tests), go to the torch reference backend.
"""

from __future__ import annotations

import torch

from orca_kernels.dispatch import use_triton
from orca_kernels.kv_store import store_kv
from orca_kernels.paged_attention import paged_prefill_attention
from orca_worker.attention import AttentionMetadata, TorchAttentionBackend


class TritonAttentionBackend:
    """AttentionBackend over the Triton kernels; falls back to `TorchAttentionBackend` for
    sliding-window layers and for tensors Triton does not handle."""

    def __init__(self) -> None:
        self.fallback = TorchAttentionBackend()

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        sliding_window: int | None,
    ) -> torch.Tensor:
        """See attention.AttentionBackend.forward."""
        if sliding_window is not None or not use_triton(q):
            return self.fallback.forward(q, k, v, k_cache, v_cache, meta, scale, sliding_window)
        store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        return paged_prefill_attention(
            q,
            k_cache,
            v_cache,
            meta.block_tables,
            meta.query_start,
            meta.context_lens,
            scale,
            max_query_len=max(meta.query_lens_host),  # host copy: no device sync
        )
