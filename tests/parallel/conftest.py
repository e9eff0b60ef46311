"""Fixtures of the parallel tests: tiny checkpoints (some edited to exercise a corner of
sharding), a per-test time limit, and the single-process reference runner."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import make_tiny_checkpoint  # tests/ is on pytest's pythonpath

# A pipeline test that hangs is a bug: fail it instead of the whole run.
TEST_TIMEOUT_S = 150
# GPT-2 with an odd vocabulary: the two TP ranks' vocabulary slices differ (191 + 190 rows).
ODD_VOCAB = 381


@pytest.fixture(autouse=True)
def time_limit():
    """Fail a test that runs longer than TEST_TIMEOUT_S."""

    def expire(signum, frame):
        raise TimeoutError(f"test exceeded {TEST_TIMEOUT_S} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TEST_TIMEOUT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _edit(path: Path, config_changes: dict, edit_tensors) -> Path:
    config = json.loads((path / "config.json").read_text())
    config.update(config_changes)
    (path / "config.json").write_text(json.dumps(config))
    tensors = load_file(path / "model.safetensors")
    save_file(
        {k: v.contiguous() for k, v in edit_tensors(tensors).items()}, path / "model.safetensors"
    )
    return path


def _one_kv_head(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep KV head 0 of every layer (head_dim 16): multi-query attention."""
    return {
        k: v[:16] if k.endswith(("k_proj.weight", "v_proj.weight")) else v
        for k, v in tensors.items()
    }


def _odd_vocab(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v[:ODD_VOCAB] if k.endswith("wte.weight") else v for k, v in tensors.items()}


CHECKPOINTS = {
    # Llama with GQA: 4 query heads, 2 KV heads.
    "llama": lambda path: make_tiny_checkpoint("llama", path),
    # One KV head for 4 query heads: with tp = 2 each rank holds a replica of it.
    "llama-mqa": lambda path: _edit(
        make_tiny_checkpoint("llama", path), {"num_key_value_heads": 1}, _one_kv_head
    ),
    "gpt2-odd-vocab": lambda path: _edit(
        make_tiny_checkpoint("gpt2", path), {"vocab_size": ODD_VOCAB}, _odd_vocab
    ),
    # Narrow embeddings with project_in/out, post-LN, a sharded (index) checkpoint.
    "opt-proj-sharded": lambda path: make_tiny_checkpoint("opt-proj", path, max_shard_size="60KB"),
}


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """name -> path of that tiny checkpoint (see CHECKPOINTS), written once per session."""
    paths: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in paths:
            paths[name] = CHECKPOINTS[name](tmp_path_factory.mktemp(name))
        return paths[name]

    return get
