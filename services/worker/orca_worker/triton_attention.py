"""Paged attention through the Triton kernels of `orca_kernels` (kernels="triton").

One `store_kv` launch writes the step's new K/V; one attention launch serves the step:
- `paged_prefill_attention` for every step with a prefill chunk, and for decode-only steps
  big enough to fill the GPU (a decode is a prefill row of length one, and its tensor-core
  tiles beat the split-K kernel there: docs/benchmarks.md);
- `paged_decode_attention` (split-K) for decode-only steps too small to fill the GPU (one
  program per sequence and KV head would leave most SMs idle; at batch 1 the prefill kernel
  runs 8 programs for Llama-3-8B's 8 KV heads).
`ORCA_DECODE_ATTENTION=prefill` keeps every step on the prefill kernel (for comparisons).
The kernels have no sliding window, so windowed layers, and tensors the kernels should not
handle here (see `orca_kernels.dispatch.use_triton`: CPU tensors outside the interpreter
tests), go to the torch reference backend.
"""

from __future__ import annotations

import functools
import os

import torch

from orca_kernels.dispatch import use_triton
from orca_kernels.kv_store import store_kv
from orca_kernels.paged_attention import paged_decode_attention, paged_prefill_attention
from orca_worker.attention import AttentionMetadata, TorchAttentionBackend

DECODE_ATTENTION_ENV = "ORCA_DECODE_ATTENTION"
# The interpreter (CPU tests) has no SMs to count: this many stands in for them.
_INTERPRETER_SMS = 128


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return _INTERPRETER_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


def use_split_k_decode(meta: AttentionMetadata, num_kv_heads: int, device: torch.device) -> bool:
    """Whether a step goes to the split-K decode kernel: decode-only, and fewer (sequence,
    KV head) programs than the GPU has SMs."""
    if os.environ.get(DECODE_ATTENTION_ENV, "auto") == "prefill":
        return False
    lens = meta.query_lens_host
    return max(lens) == 1 and len(lens) * num_kv_heads < _num_sms(device)


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
        if use_split_k_decode(meta, k_cache.shape[2], q.device):
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
            max_query_len=max(meta.query_lens_host),  # host copy: no device sync
        )
