"""Tensor parallelism as a rewrite of a built (meta-device) model, gpt-fast style.

The model files know nothing of this. `shard_model` walks the model and, following the
family's `tp_plan`, replaces each split parameter by its local slice (still on meta: the
loader allocates and fills only that) and records a `ShardLayout` saying which slice of the
checkpoint tensor it holds. Row-parallel linears and the vocabulary-parallel embedding
switch to a subclass whose forward adds the all-reduce (same parameters, same checkpoint
names); the LM head gets a hook that all-gathers the vocabulary slices into full logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from orca_worker.errors import ModelLoadError
from orca_worker.loader import ShardLayout
from orca_worker.models.base import CausalLM
from orca_worker.models.layers import Attention, Embedding, Linear
from orca_worker.parallel.distributed import ParallelComm


class RowParallelLinear(Linear):
    """A Linear holding a slice of the input features: partial products are summed over
    the TP ranks, then the (whole, replicated) bias is added once."""

    comm: ParallelComm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the projection: local partial product, all-reduce, bias."""
        out = self.comm.tp_all_reduce(F.linear(x, self.weight))
        return out if self.bias is None else out + self.bias


class VocabParallelEmbedding(Embedding):
    """An Embedding holding rows [vocab_start, vocab_start + vocab_rows): ids outside give
    zeros, and the all-reduce fills every row from the rank that holds it."""

    comm: ParallelComm
    vocab_start: int
    vocab_rows: int

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows for `ids`, assembled across the TP ranks."""
        local = ids - self.vocab_start
        outside = (local < 0) | (local >= self.vocab_rows)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        return self.comm.tp_all_reduce(out.masked_fill_(outside[:, None], 0))


def shard_model(model: CausalLM, rank: int, size: int, comm: ParallelComm) -> None:
    """Shard `model` (on the meta device) for TP rank `rank` of `size`, in place."""
    if size == 1:
        return
    config = model.config
    vocab_slice = _vocab_slice(config.vocab_size, rank, size)
    for name, module in list(model.named_modules()):
        style = model.tp_plan.get(name.rpartition(".")[2])
        if style is None or module is None:
            continue
        if not isinstance(module, Linear):
            raise ModelLoadError(f"tp_plan names {name!r}, which is not a Linear")
        if style == "qkv":
            parent = model.get_submodule(name.rpartition(".")[0])
            _shard_qkv(module, parent, rank, size)
        elif style == "column":
            _shard_columns(module, name, rank, size)
        elif style == "row":
            _shard_rows(module, name, rank, size, comm)
        else:
            raise ModelLoadError(f"unknown tp_plan style {style!r} for {name!r}")
    embed = _find(model, model.token_embedding)
    if embed is not None:
        _shard_vocab(embed, vocab_slice, size)
        embed.__class__ = VocabParallelEmbedding
        embed.comm, embed.vocab_start, embed.vocab_rows = comm, vocab_slice[0], vocab_slice[1]
    head = getattr(model, "lm_head", None)
    if head is not None:
        if isinstance(head, Linear):
            _shard_vocab(head, vocab_slice, size)
        head.register_forward_hook(_gather_logits(comm, config.vocab_size))


def kv_heads_per_rank(num_heads: int, num_kv_heads: int, size: int) -> int:
    """KV heads each TP rank holds: a share of them, or one replicated head when there are
    fewer KV heads than ranks."""
    if num_heads % size:
        raise ModelLoadError(f"{num_heads} attention heads do not split over tp={size}")
    if num_kv_heads % size == 0:
        return num_kv_heads // size
    if size % num_kv_heads == 0:
        return 1
    raise ModelLoadError(
        f"{num_kv_heads} KV heads neither split over nor replicate evenly to tp={size}"
    )


def _shard_qkv(qkv: Linear, attn: nn.Module, rank: int, size: int) -> None:
    """Split a fused q|k|v projection by heads; rank r's query heads and the KV heads they
    read (GQA keeps each rank's query heads inside one KV group)."""
    if not isinstance(attn, Attention):
        raise ModelLoadError("a 'qkv' projection must belong to an Attention module")
    heads, kv_heads, head_dim = attn.num_heads, attn.num_kv_heads, attn.head_dim
    local_kv = kv_heads_per_rank(heads, kv_heads, size)
    local_heads = heads // size
    first_kv = rank * kv_heads // size  # = rank * local_kv when KV heads split evenly
    q_piece = (rank * local_heads * head_dim, local_heads * head_dim)
    kv_piece = (first_kv * head_dim, local_kv * head_dim)
    _set_layout(qkv, ShardLayout(0, qkv.output_sizes, (q_piece, kv_piece, kv_piece)))
    attn.num_heads, attn.num_kv_heads = local_heads, local_kv
    attn.q_size, attn.kv_size = local_heads * head_dim, local_kv * head_dim
    attn.attn.num_heads, attn.attn.num_kv_heads = local_heads, local_kv


def _shard_columns(linear: Linear, name: str, rank: int, size: int) -> None:
    """Split each packed part's output features evenly."""
    for n in linear.output_sizes:
        if n % size:
            raise ModelLoadError(f"{name}: {n} output features do not split over tp={size}")
    pieces = tuple((rank * n // size, n // size) for n in linear.output_sizes)
    _set_layout(linear, ShardLayout(0, linear.output_sizes, pieces))


def _shard_rows(linear: Linear, name: str, rank: int, size: int, comm: ParallelComm) -> None:
    """Split the input features evenly; the forward sums the partial outputs."""
    in_features = linear.weight.shape[1]
    if in_features % size:
        raise ModelLoadError(f"{name}: {in_features} input features do not split over tp={size}")
    n = in_features // size
    layout = ShardLayout(1, (in_features,), ((rank * n, n),))
    linear.shard_layout = layout
    linear.weight = _meta_param(linear.weight.shape[0], n, like=linear.weight)
    linear.__class__ = RowParallelLinear
    linear.comm = comm


def _shard_vocab(module: nn.Module, vocab_slice: tuple[int, int, int], size: int) -> None:
    """Keep rows [start, start + rows) of a [vocab, dim] weight, padded to `padded` rows so
    that every rank's slice (and its logits) has the same shape."""
    start, rows, padded = vocab_slice
    full = module.weight.shape[0]
    module.shard_layout = ShardLayout(0, (full,), ((start, rows),))
    module.weight = _meta_param(padded, module.weight.shape[1], like=module.weight)


def _set_layout(linear: Linear, layout: ShardLayout) -> None:
    """Give a dim-0 sharded Linear its local weight, bias and output sizes."""
    local_sizes = tuple(length for _, length in layout.pieces)
    rows = sum(local_sizes)
    linear.shard_layout = layout
    linear.output_sizes = local_sizes
    linear.weight = _meta_param(rows, linear.weight.shape[1], like=linear.weight)
    if linear.bias is not None:
        linear.bias = _meta_param(rows, like=linear.bias)


def _vocab_slice(vocab_size: int, rank: int, size: int) -> tuple[int, int, int]:
    """(first id, real rows, padded rows) of rank's vocabulary slice."""
    padded = -(-vocab_size // size)
    start = min(rank * padded, vocab_size)
    return start, min(padded, vocab_size - start), padded


def _gather_logits(comm: ParallelComm, vocab_size: int):
    def hook(module: nn.Module, args, logits: torch.Tensor) -> torch.Tensor:
        return comm.tp_all_gather(logits)[..., :vocab_size]

    return hook


def _find(model: nn.Module, path: str) -> nn.Module | None:
    parent, _, leaf = path.rpartition(".")
    try:
        return getattr(model.get_submodule(parent) if parent else model, leaf)
    except AttributeError:
        return None


def _meta_param(*shape: int, like: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, dtype=like.dtype, device="meta"), requires_grad=False)
