"""Sizing and shape of the paged KV pool."""

from __future__ import annotations

import dataclasses

import torch

from orca_worker.config import load_model_config
from orca_worker.kv_cache import (
    CPU_KV_BUDGET_BYTES,
    CPU_MAX_FULL_SEQS,
    KVCachePool,
    kv_bytes_per_block,
    plan_num_blocks,
)
from orca_worker.runner import ModelRunner, RunnerConfig


def test_cpu_budget(tiny_checkpoint):
    config = load_model_config(tiny_checkpoint("llama"))
    per_block = kv_bytes_per_block(config, 16, torch.float32)
    assert per_block == 2 * 2 * 16 * 2 * 16 * 4  # K+V, layers, block, kv heads, head_dim, fp32
    blocks = plan_num_blocks(config, 16, torch.float32, torch.device("cpu"), 0.9)
    assert blocks == CPU_MAX_FULL_SEQS * 512 // 16  # the tiny model's 512 positions
    big = dataclasses.replace(config, max_position_embeddings=1 << 20)
    blocks = plan_num_blocks(big, 16, torch.float32, torch.device("cpu"), 0.9)
    assert blocks == CPU_KV_BUDGET_BYTES // per_block


def test_pool_shapes():
    pool = KVCachePool(3, 10, 16, 2, 8, torch.float16, torch.device("cpu"))
    assert len(pool.k_caches) == len(pool.v_caches) == 3
    assert pool.k_caches[0].shape == (10, 16, 2, 8) and pool.k_caches[0].dtype == torch.float16
    assert pool.kv_bytes == 2 * 3 * 10 * 16 * 2 * 8 * 2


def test_runner_default_pool_on_cpu(tiny_checkpoint):
    runner = ModelRunner(RunnerConfig(str(tiny_checkpoint("qwen3"))))
    info = runner.info()
    assert info.num_kv_blocks * kv_bytes_per_block(runner.model_config, 16, torch.float32) <= (
        CPU_KV_BUDGET_BYTES
    )
    assert info.block_size == 16
