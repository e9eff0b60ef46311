"""CUDA graphs for decode steps: one captured forward (embeddings to logits) per batch size.

A decode step of a few hundred sequences is a few hundred kernel launches per layer's worth
of work: on a GPU the host's launch time, not the GPU, sets the step's length. A CUDA graph
replays the whole captured forward with one launch. Graphs need fixed shapes and fixed
addresses, so each captured batch size B (the `graph_batch_sizes` ladder) reads its inputs
from static buffers: a step of n <= B sequences is copied into the first n rows and the
rest padded (`DecodeInputs.stage`): token 0 at position 0, KV slot -1 (the KV store skips
it), context length 0 (attention reads nothing and writes zeros). Every other operation is
row-wise, so padded rows never touch real ones; their logits are dropped.

Only decode steps are graphed: every sequence brings one token and is sampled. Prefill and
mixed steps run eagerly. Graphs need the Triton kernels (the torch attention backend loops
over host lists) and a single-process worker (no collectives in the captured forward).

`DecodeGraphs(..., capture=False)` runs the same static-buffer forward eagerly: that is how
the padding is tested on the CPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from orca_worker.attention import AttentionMetadata
from orca_worker.batch import PreparedBatch

log = logging.getLogger(__name__)

# Batch sizes graphs are captured for: steps that keep the padding within a quarter of the
# step (or 4 rows for small steps).
_LADDER = (1, 2, 4, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128)
_LADDER += (160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024)


def graph_batch_sizes(max_batch: int) -> list[int]:
    """The captured batch sizes for graphs of at most `max_batch` sequences (ascending; empty
    for 0). `max_batch` itself is always one of them."""
    if max_batch <= 0:
        return []
    sizes = [b for b in _LADDER if b < max_batch]
    return [*sizes, max_batch]


def pick_batch_size(n: int, sizes: list[int]) -> int | None:
    """The smallest captured size that holds `n` sequences, None when none does."""
    for size in sizes:
        if size >= n:
            return size
    return None


def is_graphable(batch: PreparedBatch) -> bool:
    """Whether the step is a pure decode step: every sequence brings one token and is sampled
    (so the sampled rows are the batch's rows, in order)."""
    meta = batch.meta
    if meta is None or batch.input_ids is None:
        return False
    n = meta.num_seqs
    return batch.input_ids.numel() == n and len(batch.sampled_states) == n


class DecodeInputs:
    """The static input buffers of the graphs (room for `max_batch` sequences of up to
    `max_blocks` KV blocks each), and the metadata views a batch size reads."""

    def __init__(
        self, max_batch: int, max_blocks: int, block_size: int, device: torch.device
    ) -> None:
        self.block_size = block_size
        self.input_ids = torch.zeros(max_batch, dtype=torch.long, device=device)
        self.positions = torch.zeros(max_batch, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((max_batch,), -1, dtype=torch.long, device=device)
        self.context_lens = torch.zeros(max_batch, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(max_batch, max_blocks, dtype=torch.int32, device=device)
        self.query_start = torch.arange(max_batch + 1, dtype=torch.int32, device=device)
        self.rows = torch.arange(max_batch, dtype=torch.long, device=device)

    def metadata(self, size: int) -> AttentionMetadata:
        """Attention metadata over the first `size` rows: one query token per sequence."""
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:size],
            query_start=self.query_start[: size + 1],
            context_lens=self.context_lens[:size],
            block_tables=self.block_tables[:size],
            block_size=self.block_size,
            query_start_host=list(range(size + 1)),
            query_lens_host=[1] * size,
            context_lens_host=[0] * size,  # unknown at capture; no Triton path reads it
            decode_seqs_host=list(range(size)),
            decode_seqs=self.rows[:size],
            decode_rows=self.rows[:size],
        )

    def stage(self, batch: PreparedBatch, size: int) -> None:
        """Copy a decode step of n <= size sequences into the first n rows and pad the rest
        up to `size` (device-side copies only: no host sync)."""
        meta = batch.meta
        assert meta is not None and batch.input_ids is not None and batch.positions is not None
        n = meta.num_seqs
        width = meta.block_tables.shape[1]
        self.input_ids[:n].copy_(batch.input_ids)
        self.positions[:n].copy_(batch.positions)
        self.slot_mapping[:n].copy_(meta.slot_mapping)
        self.context_lens[:n].copy_(meta.context_lens)
        self.block_tables[:n, :width].copy_(meta.block_tables)
        if n < size:
            self.input_ids[n:size].zero_()
            self.positions[n:size].zero_()
            self.slot_mapping[n:size].fill_(-1)
            self.context_lens[n:size].zero_()


# The captured function: (input_ids, positions, metadata) -> float32 logits [rows, vocab].
ForwardFn = Callable[[torch.Tensor, torch.Tensor, AttentionMetadata], torch.Tensor]


class DecodeGraphs:
    """Captured decode forwards for the `graph_batch_sizes(max_batch)` ladder; `run` replays
    the smallest that holds a step. With `capture=False` (CPU, tests) `run` calls the same
    forward eagerly over the same padded static buffers."""

    def __init__(
        self,
        forward: ForwardFn,
        max_batch: int,
        max_blocks: int,
        block_size: int,
        device: torch.device,
        capture: bool = True,
    ) -> None:
        self.forward = forward
        self.sizes = graph_batch_sizes(max_batch)
        self.inputs = DecodeInputs(max_batch, max_blocks, block_size, device)
        self.captured = capture
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        if capture:
            self._capture_all(device)

    def holds(self, batch: PreparedBatch) -> int | None:
        """The batch size that would run this step as a graph, None to run it eagerly."""
        if not is_graphable(batch):
            return None
        assert batch.meta is not None
        if batch.meta.block_tables.shape[1] > self.inputs.block_tables.shape[1]:
            return None
        return pick_batch_size(batch.meta.num_seqs, self.sizes)

    def run(self, batch: PreparedBatch, size: int) -> torch.Tensor:
        """The float32 logits [n, vocab] of a decode step of n <= size sequences."""
        n = batch.meta.num_seqs if batch.meta is not None else 0
        self.inputs.stage(batch, size)
        if not self.captured:
            logits = self._call(size)
        else:
            graph, logits = self._graphs[size]
            graph.replay()
        return logits[:n]

    def _call(self, size: int) -> torch.Tensor:
        i = self.inputs
        return self.forward(i.input_ids[:size], i.positions[:size], i.metadata(size))

    def _capture_all(self, device: torch.device) -> None:
        started = time.perf_counter()
        pool = None
        side = torch.cuda.Stream(device)
        # Largest first: the smaller graphs then fit in the memory the largest reserved.
        for size in sorted(self.sizes, reverse=True):
            self.inputs.context_lens[:size].fill_(1)  # warm-up reads one (garbage) token
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):  # warm-up: Triton compiles, allocator settles
                for _ in range(2):
                    self._call(size)
            torch.cuda.current_stream(device).wait_stream(side)
            self.inputs.context_lens.zero_()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                logits = self._call(size)
            pool = graph.pool()
            self._graphs[size] = (graph, logits)
        torch.cuda.synchronize(device)
        log.info(
            "cuda_graphs_captured sizes=%s seconds=%.2f",
            ",".join(map(str, self.sizes)),
            time.perf_counter() - started,
        )
