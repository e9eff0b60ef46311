"""The paged KV pool: per layer, K and V blocks of [block_size, num_kv_heads, head_dim].

A worker holds the pool of its own layers (its pipeline stage) and KV heads (its TP rank).
"""

from __future__ import annotations

import torch
from torch import nn

from orca_worker.attention import AttentionBackend, PagedAttention
from orca_worker.config import ModelConfig

# With no GPU to measure, a CPU worker sizes its pool from a fixed budget unless told a
# number of blocks: at most this many bytes (never swaps a laptop) ...
CPU_KV_BUDGET_BYTES = 512 * 1024 * 1024
# ... and at most enough for this many full-length sequences (a tiny model needs little,
# and zeroing a big pool costs a test ~0.3 s).
CPU_MAX_FULL_SEQS = 32


class KVCachePool:
    """All layers' K and V caches in one allocation; block ids index dimension 0 of each."""

    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        # One tensor so that the pool is one allocation; per-layer views below.
        self._storage = torch.zeros(
            2,
            num_layers,
            num_blocks,
            block_size,
            num_kv_heads,
            head_dim,
            dtype=dtype,
            device=device,
        )
        self.k_caches = list(self._storage[0].unbind(0))
        self.v_caches = list(self._storage[1].unbind(0))

    @property
    def kv_bytes(self) -> int:
        """Bytes held by the pool."""
        return self._storage.numel() * self._storage.element_size()


def kv_bytes_per_block(
    config: ModelConfig,
    block_size: int,
    dtype: torch.dtype,
    *,
    num_layers: int | None = None,
    num_kv_heads: int | None = None,
) -> int:
    """Bytes one block costs across the layers and KV heads this worker holds (default: the
    whole model's), K and V."""
    elem = torch.empty((), dtype=dtype).element_size()
    layers = config.num_layers if num_layers is None else num_layers
    heads = config.num_kv_heads if num_kv_heads is None else num_kv_heads
    return 2 * layers * block_size * heads * config.head_dim * elem


def plan_num_blocks(
    config: ModelConfig,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
    memory_fraction: float,
    *,
    num_layers: int | None = None,
    num_kv_heads: int | None = None,
) -> int:
    """How many blocks fit: `memory_fraction` of free GPU memory (measured after the weights
    are loaded); on CPU, CPU_KV_BUDGET_BYTES or CPU_MAX_FULL_SEQS sequences, the smaller.
    `num_layers` / `num_kv_heads`: this worker's share (a pipeline stage, a TP rank)."""
    per_block = kv_bytes_per_block(
        config, block_size, dtype, num_layers=num_layers, num_kv_heads=num_kv_heads
    )
    if device.type == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info(device)
        budget = int(free_bytes * memory_fraction)
        num_blocks = budget // per_block
    else:
        budget = CPU_KV_BUDGET_BYTES
        blocks_per_seq = -(-config.max_position_embeddings // block_size)
        num_blocks = min(budget // per_block, CPU_MAX_FULL_SEQS * blocks_per_seq)
    if num_blocks < 1:
        raise MemoryError(f"no room for a single KV block ({per_block} bytes, budget {budget})")
    return num_blocks


def attention_layers(model: nn.Module) -> list[PagedAttention]:
    """The model's attention layers, in layer order (a pipeline stage: only its own)."""
    return [m for m in model.modules() if isinstance(m, PagedAttention)]


def bind_kv_cache(model: nn.Module, pool: KVCachePool, backend: AttentionBackend) -> None:
    """Point each PagedAttention layer of `model`, in layer order, at its slice of the pool."""
    layers = attention_layers(model)
    if len(layers) != len(pool.k_caches):
        raise RuntimeError(f"model has {len(layers)} attention layers, pool {len(pool.k_caches)}")
    for layer, k_cache, v_cache in zip(layers, pool.k_caches, pool.v_caches, strict=True):
        layer.k_cache, layer.v_cache, layer.backend = k_cache, v_cache, backend
