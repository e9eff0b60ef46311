"""Paged attention: per-step metadata, the backend interface, and the torch reference backend.

Selective batching runs every operation on the packed [num_tokens, hidden] tensor except
attention, which needs each sequence's own history. `AttentionMetadata` describes that
split once per step; every layer's `PagedAttention` reads it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn


@dataclass
class AttentionMetadata:
    """How the packed tokens of one step split into sequences, and where their KV lives."""

    # [num_tokens] flat index into the cache viewed as [num_blocks * block_size, ...]
    slot_mapping: torch.Tensor
    # [num_seqs + 1] offsets of each sequence's tokens in the packed batch (int32, device)
    query_start: torch.Tensor
    # [num_seqs] tokens in the cache after this step: start_position + new tokens (int32, device)
    context_lens: torch.Tensor
    # [num_seqs, max_blocks] block ids in position order, zero-padded (int32, device)
    block_tables: torch.Tensor
    block_size: int
    # Host copies, so that a backend can loop over sequences without a device sync.
    query_start_host: list[int]
    query_lens_host: list[int]
    context_lens_host: list[int]
    # The sequences with one new token (decodes), which a backend can batch: their indices
    # (host list and device tensor) and their tokens' rows in the packed batch (device).
    decode_seqs_host: list[int]
    decode_seqs: torch.Tensor
    decode_rows: torch.Tensor

    @property
    def num_seqs(self) -> int:
        """Number of sequences in the step."""
        return len(self.query_lens_host)

    @functools.cached_property
    def max_query_len(self) -> int:
        """The most new tokens of any sequence (1: a decode-only step); computed once per
        step, not once per layer."""
        return max(self.query_lens_host, default=0)

    @classmethod
    def from_layout(
        cls,
        layout: HostLayout,
        block_size: int,
        int64: tuple[torch.Tensor, ...],
        int32: tuple[torch.Tensor, ...],
    ) -> AttentionMetadata:
        """The metadata of `layout`, given its arrays already on the device:
        `int64` = (slot_mapping, decode_seqs, decode_rows) and
        `int32` = (query_start, context_lens, block_tables), as `HostLayout.int64_arrays`
        and `int32_arrays` order them."""
        slot_mapping, decode_seqs, decode_rows = int64
        query_start, context_lens, block_tables = int32
        return cls(
            slot_mapping=slot_mapping,
            query_start=query_start,
            context_lens=context_lens,
            block_tables=block_tables,
            block_size=block_size,
            query_start_host=layout.query_start.tolist(),
            query_lens_host=layout.query_lens.tolist(),
            context_lens_host=layout.context_lens.tolist(),
            decode_seqs_host=layout.decode_seqs.tolist(),
            decode_seqs=decode_seqs,
            decode_rows=decode_rows,
        )

    @classmethod
    def build(
        cls,
        start_positions: list[int],
        query_lens: list[int],
        block_tables: list[list[int]],
        block_size: int,
        device: torch.device,
    ) -> AttentionMetadata:
        """Build the metadata of one step on `device` (host layout, then its upload)."""
        from orca_worker.host_staging import HostStaging

        layout = HostLayout.compute(start_positions, query_lens, block_tables, block_size)
        staging = HostStaging(device)
        return cls.from_layout(
            layout,
            block_size,
            tuple(staging.upload(layout.int64_arrays())),
            tuple(staging.upload(layout.int32_arrays())),
        )


@dataclass
class HostLayout:
    """How one step's packed tokens split into sequences, computed on the host (numpy):
    everything the metadata holds, before one upload per dtype."""

    query_lens: np.ndarray  # int64 [S]
    positions: np.ndarray  # int64 [T]: each token's position in its sequence
    slot_mapping: np.ndarray  # int64 [T]: flat KV slot of each token
    query_start: np.ndarray  # int32 [S + 1]
    context_lens: np.ndarray  # int32 [S]
    block_tables: np.ndarray  # int32 [S, max blocks], zero-padded
    decode_seqs: np.ndarray  # int64: sequences with one new token
    decode_rows: np.ndarray  # int64: their tokens' rows

    @classmethod
    def compute(
        cls,
        start_positions: list[int],
        query_lens: list[int],
        block_tables: list[list[int]],
        block_size: int,
    ) -> HostLayout:
        """The layout of a step: sequence i brings query_lens[i] tokens from position
        start_positions[i], its KV in blocks block_tables[i] (position order)."""
        lens = np.asarray(query_lens, dtype=np.int64)
        starts = np.asarray(start_positions, dtype=np.int64)
        context = starts + lens
        blocks_needed = -(-context // block_size)
        # Only the blocks that hold the context; kernels never read past context_len.
        tables = np.zeros((len(lens), int(blocks_needed.max())), dtype=np.int32)
        for i, (table, n) in enumerate(zip(block_tables, blocks_needed.tolist(), strict=True)):
            tables[i, :n] = table[:n]
        query_start = np.zeros(len(lens) + 1, dtype=np.int64)
        np.cumsum(lens, out=query_start[1:])
        seq_of_token = np.repeat(np.arange(len(lens)), lens)
        positions = (
            np.arange(int(query_start[-1])) - query_start[seq_of_token] + starts[seq_of_token]
        )
        slots = tables[seq_of_token, positions // block_size].astype(np.int64) * block_size
        decodes = np.flatnonzero(lens == 1)
        return cls(
            query_lens=lens,
            positions=positions,
            slot_mapping=slots + positions % block_size,
            query_start=query_start.astype(np.int32),
            context_lens=context.astype(np.int32),
            block_tables=tables,
            decode_seqs=decodes.astype(np.int64),
            decode_rows=query_start[decodes],
        )

    def int64_arrays(self) -> list[np.ndarray]:
        """(slot_mapping, decode_seqs, decode_rows): the int64 metadata arrays."""
        return [self.slot_mapping, self.decode_seqs, self.decode_rows]

    def int32_arrays(self) -> list[np.ndarray]:
        """(query_start, context_lens, block_tables): the int32 metadata arrays."""
        return [self.query_start, self.context_lens, self.block_tables]


class AttentionBackend(Protocol):
    """Stores a step's new K/V in the paged cache and attends over each sequence's context."""

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
        """q [T, Hq, D], k/v [T, Hkv, D], caches [blocks, block_size, Hkv, D] -> [T, Hq, D]."""
        ...


class TorchAttentionBackend:
    """Reference backend in plain torch, correct for any mix of prefill chunks and decodes.

    Decodes are batched (one padded, masked attention per chunk of sequences), since a
    per-sequence loop is launch-bound on a GPU; prefill chunks are attended one sequence
    at a time. The Triton backend must match it.
    """

    # Most context tokens one batched decode gathers at once (bounds its temporary memory).
    decode_gather_tokens: int = 1 << 16

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
        """See AttentionBackend.forward."""
        store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        out = torch.empty_like(q)
        if meta.decode_seqs_host:
            self._decodes(q, k_cache, v_cache, meta, scale, sliding_window, out)
        for i in range(meta.num_seqs):
            if meta.query_lens_host[i] > 1:
                self._prefill(i, q, k_cache, v_cache, meta, scale, sliding_window, out)
        return out

    def _prefill(
        self,
        i: int,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        window: int | None,
        out: torch.Tensor,
    ) -> None:
        """Causal attention of sequence i's new tokens over its whole context."""
        q_start, q_len = meta.query_start_host[i], meta.query_lens_host[i]
        ctx_len = meta.context_lens_host[i]
        blocks = meta.block_tables[i, : -(-ctx_len // meta.block_size)]
        keys = k_cache[blocks].flatten(0, 1)[:ctx_len]  # [ctx, Hkv, D]
        values = v_cache[blocks].flatten(0, 1)[:ctx_len]
        group = q.shape[1] // keys.shape[1]
        if group > 1:  # GQA: kv head j serves query heads j*group .. (j+1)*group - 1
            keys = keys.repeat_interleave(group, dim=1)
            values = values.repeat_interleave(group, dim=1)
        query = q[q_start : q_start + q_len]
        # [H, q_len, ctx_len]; float32 scores and softmax, whatever the model dtype.
        scores = torch.einsum("qhd,khd->hqk", query.float(), keys.float()) * scale
        query_pos = torch.arange(ctx_len - q_len, ctx_len, device=q.device)[:, None]
        key_pos = torch.arange(ctx_len, device=q.device)[None, :]
        scores.masked_fill_(~_visible(query_pos, key_pos, window), float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(values.dtype)
        out[q_start : q_start + q_len] = torch.einsum("hqk,khd->qhd", probs, values)

    def _decodes(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        window: int | None,
        out: torch.Tensor,
    ) -> None:
        """All one-token sequences at once, in chunks padded to the longest context."""
        num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
        group = q.shape[1] // num_kv_heads
        width = max(-(-meta.context_lens_host[i] // meta.block_size) for i in meta.decode_seqs_host)
        chunk = max(1, self.decode_gather_tokens // (width * meta.block_size))
        key_pos = torch.arange(width * meta.block_size, device=q.device)[None, :]
        for first in range(0, len(meta.decode_seqs_host), chunk):
            seqs = meta.decode_seqs[first : first + chunk]
            rows = meta.decode_rows[first : first + chunk]
            n = seqs.shape[0]
            tables = meta.block_tables[seqs, :width]
            keys = k_cache[tables].flatten(1, 2)  # [n, width * block_size, Hkv, D]
            values = v_cache[tables].flatten(1, 2)
            query = q[rows].view(n, num_kv_heads, group, head_dim)
            scores = torch.einsum("nkgd,ntkd->nkgt", query.float(), keys.float()) * scale
            # The query sits at position context_len - 1; padding slots are masked out.
            query_pos = (meta.context_lens[seqs] - 1)[:, None]
            visible = _visible(query_pos, key_pos, window)  # [n, width * block_size]
            scores.masked_fill_(~visible[:, None, None, :], float("-inf"))
            probs = torch.softmax(scores, dim=-1).to(values.dtype)
            attended = torch.einsum("nkgt,ntkd->nkgd", probs, values)
            out[rows] = attended.reshape(n, -1, head_dim)


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write each token's K/V [T, Hkv, D] to its slot of the paged caches."""
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, k.to(k_cache.dtype))
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, v.to(v_cache.dtype))


def _visible(query_pos: torch.Tensor, key_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """Causal (and sliding-window) mask: a query at position p sees keys at j <= p, and
    j > p - window when there is a window. Shapes broadcast."""
    mask = key_pos <= query_pos
    if window is not None:
        mask &= key_pos > query_pos - window
    return mask


class PagedAttention(nn.Module):
    """One layer's attention over the paged cache; the cache and backend are bound by the runner."""

    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        scale: float,
        sliding_window: int | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale
        self.sliding_window = sliding_window
        # Bound after the KV pool is allocated (see kv_cache.bind_kv_cache).
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None
        self.backend: AttentionBackend | None = None

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """q [T, Hq, D], k/v [T, Hkv, D] -> [T, Hq, D]."""
        if self.backend is None or self.k_cache is None or self.v_cache is None:
            raise RuntimeError("PagedAttention used before a KV cache was bound")
        return self.backend.forward(
            q, k, v, self.k_cache, self.v_cache, meta, self.scale, self.sliding_window
        )
