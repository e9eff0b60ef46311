"""Sharding a model at load time, in one process (no process group): each TP rank's
parameters are exactly its slices of the full model's, and a pipeline stage holds only
its own layers."""

from __future__ import annotations

import pytest
import torch

from orca_worker.config import load_model_config
from orca_worker.errors import ModelLoadError
from orca_worker.loader import load_model
from orca_worker.parallel.pp import prune_to_stage
from orca_worker.parallel.tp import kv_heads_per_rank, shard_model

CPU = torch.device("cpu")


def _load(path, prepare=None, load_format="safetensors"):
    config = load_model_config(path)
    return load_model(config, path, torch.float32, CPU, load_format, 0, prepare)


def _params(model) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters())


def _tp_rank(path, rank, size=2, **kwargs):
    # comm is only used in the forward, which these tests do not run.
    return _params(_load(path, lambda m: shard_model(m, rank, size, comm=None), **kwargs))


def test_llama_gqa_ranks_hold_their_heads(checkpoint):
    path = checkpoint("llama")  # 4 heads, 2 KV heads, head_dim 16, intermediate 128
    full = _params(_load(path))
    for rank in (0, 1):
        mine = _tp_rank(path, rank)
        qkv, full_qkv = (
            mine["model.layers.1.self_attn.qkv_proj.weight"],
            full["model.layers.1.self_attn.qkv_proj.weight"],
        )
        q, k, v = full_qkv.split([64, 32, 32])
        rows = slice(16 * rank, 16 * (rank + 1))
        assert torch.equal(qkv, torch.cat([q[32 * rank : 32 * (rank + 1)], k[rows], v[rows]]))
        o = mine["model.layers.1.self_attn.o_proj.weight"]
        assert torch.equal(
            o, full["model.layers.1.self_attn.o_proj.weight"][:, 32 * rank :][:, :32]
        )
        gate, up = full["model.layers.0.mlp.gate_up_proj.weight"].split([128, 128])
        half = slice(64 * rank, 64 * (rank + 1))
        assert torch.equal(
            mine["model.layers.0.mlp.gate_up_proj.weight"], torch.cat([gate[half], up[half]])
        )
        down = full["model.layers.0.mlp.down_proj.weight"][:, half]
        assert torch.equal(mine["model.layers.0.mlp.down_proj.weight"], down)
        vocab = slice(192 * rank, 192 * (rank + 1))
        assert torch.equal(
            mine["model.embed_tokens.weight"], full["model.embed_tokens.weight"][vocab]
        )
        assert torch.equal(mine["lm_head.weight"], full["lm_head.weight"][vocab])
        assert torch.equal(mine["model.norm.weight"], full["model.norm.weight"])


def test_one_kv_head_is_replicated(checkpoint):
    path = checkpoint("llama-mqa")
    full = _params(_load(path))["model.layers.0.self_attn.qkv_proj.weight"]
    q, kv = full[:64], full[64:]
    for rank in (0, 1):
        mine = _tp_rank(path, rank)["model.layers.0.self_attn.qkv_proj.weight"]
        assert torch.equal(mine, torch.cat([q[32 * rank : 32 * (rank + 1)], kv]))


def test_gpt2_conv1d_biases_and_an_odd_vocabulary(checkpoint):
    path = checkpoint("gpt2-odd-vocab")  # hidden 64, vocab 381: slices of 191 and 190 rows
    full = _params(_load(path))
    rank1 = _tp_rank(path, 1)
    wte = rank1["transformer.wte.weight"]
    assert wte.shape == (191, 64)
    assert torch.equal(wte[:190], full["transformer.wte.weight"][191:])
    assert torch.equal(wte[190], torch.zeros(64))  # padding row
    bias = full["transformer.h.0.attn.qkv_proj.bias"]
    assert torch.equal(
        rank1["transformer.h.0.attn.qkv_proj.bias"],
        torch.cat([bias[32:64], bias[96:128], bias[160:]]),
    )
    c_proj = full["transformer.h.0.attn.o_proj.weight"]  # transposed on disk
    assert torch.equal(rank1["transformer.h.0.attn.o_proj.weight"], c_proj[:, 32:])
    # Row-parallel biases stay whole: added once, after the all-reduce.
    assert torch.equal(
        rank1["transformer.h.0.mlp.fc_out.bias"], full["transformer.h.0.mlp.fc_out.bias"]
    )


def test_sharded_index_checkpoint_and_stage_pruning(checkpoint):
    path = checkpoint("opt-proj-sharded")
    full = _params(_load(path))

    def stage(first: bool, last: bool, layers: range):
        return _params(
            _load(
                path, lambda m: (prune_to_stage(m, layers, first, last), shard_model(m, 0, 2, None))
            )
        )

    first = stage(True, False, range(0, 1))
    assert {n.split(".")[3] for n in first if n.startswith("model.decoder.layers.")} == {"0"}
    assert "model.decoder.project_in.weight" in first
    assert not any(n.startswith(("lm_head", "model.decoder.project_out")) for n in first)
    last = stage(False, True, range(1, 2))
    assert {n.split(".")[3] for n in last if n.startswith("model.decoder.layers.")} == {"1"}
    # The LM head is tied: the last stage keeps the token embedding (its vocabulary slice).
    assert torch.equal(
        last["model.decoder.embed_tokens.weight"], full["model.decoder.embed_tokens.weight"][:192]
    )
    assert "model.decoder.embed_positions.weight" not in last
    assert torch.equal(
        last["model.decoder.layers.1.mlp.fc_in.weight"],  # fc1 on disk: column-parallel
        full["model.decoder.layers.1.mlp.fc_in.weight"][:64],
    )


def test_random_weights_allocate_only_the_local_shard(checkpoint):
    mine = _tp_rank(checkpoint("llama"), 1, load_format="random")
    assert mine["model.layers.0.self_attn.qkv_proj.weight"].shape == (64, 64)
    assert mine["model.embed_tokens.weight"].shape == (192, 64)


@pytest.mark.parametrize(
    ("heads", "kv_heads", "size", "want"), [(32, 8, 4, 2), (32, 8, 8, 1), (32, 2, 8, 1)]
)
def test_kv_heads_per_rank(heads, kv_heads, size, want):
    assert kv_heads_per_rank(heads, kv_heads, size) == want


@pytest.mark.parametrize(("heads", "kv_heads", "size"), [(6, 6, 4), (12, 3, 2), (32, 8, 3)])
def test_heads_that_do_not_split(heads, kv_heads, size):
    with pytest.raises(ModelLoadError, match="tp="):
        kv_heads_per_rank(heads, kv_heads, size)
