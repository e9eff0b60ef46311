"""Paged attention through the Triton kernels of `orca_kernels` (kernels="triton").

One `store_kv` launch writes the step's new K/V; one attention launch serves the step:
`paged_prefill_attention` when it has a prefill chunk (decodes in it are prefill rows of
length one), `paged_decode_attention` (split-K: each sequence's context cut over several
programs, so that even one sequence fills the GPU) when every row is a decode. On an H100
the split-K kernel beat the prefill kernel on decode rows at every batch size and context
but the shortest (batch 1-8 at 128 tokens), and decode-only steps gained 0.24 ms/token at
batch 1 (docs/benchmarks.md). `ORCA_DECODE_ATTENTION=prefill` keeps every step on the
prefill kernel (for comparisons). The kernels have no sliding window, so windowed layers,
and tensors the kernels should not handle here (see `orca_kernels.dispatch.use_triton`: CPU
tensors outside the interpreter tests), go to the torch reference backend.
"""

from __future__ import annotations

import os

import torch

from orca_kernels.dispatch import use_triton
from orca_kernels.kv_store import store_kv
from orca_kernels.paged_attention import paged_decode_attention, paged_prefill_attention
from orca_worker.attention import AttentionMetadata, TorchAttentionBackend

DECODE_ATTENTION_ENV = "ORCA_DECODE_ATTENTION"


class TritonAttentionBackend:
    """AttentionBackend over the Triton kernels; falls back to `TorchAttentionBackend` for
    sliding-window layers and for tensors Triton does not handle."""

    def __init__(self) -> None:
        self.fallback = TorchAttentionBackend()
        # Read once, not per layer: decode-only steps take the split-K kernel unless the
        # environment keeps them on the prefill kernel.
        self.split_k_decode = os.environ.get(DECODE_ATTENTION_ENV, "auto") != "prefill"

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
        if self.split_k_decode and meta.max_query_len == 1:
            return paged_decode_attention(
                q, k_cache, v_cache, meta.block_tables, meta.context_lens, scale
            )
        return paged_prefill_attention(
            q,
            k_cache,
            v_cache,
            meta.block_tables,
            meta.query_start,
            meta.context_lens,
            scale,
            max_query_len=meta.max_query_len,  # from the host copy: no device sync
        )
