"""Loading checkpoints: sharded and prefix-less files, random weights, and clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from plan_driver import PlanDriver
from safetensors.torch import load_file, save_file
from tiny_models import VOCAB_SIZE, make_tiny_checkpoint, random_prompts

from orca_worker.errors import MissingWeightsError, ModelLoadError, UnsupportedArchitectureError
from orca_worker.runner import ModelRunner, RunnerConfig


def _runner(path, **kwargs) -> ModelRunner:
    return ModelRunner(RunnerConfig(str(path), num_kv_blocks=16, **kwargs))


def _greedy(runner: ModelRunner, steps: int = 4) -> list[int]:
    prompt = random_prompts((11,), runner.model_config.vocab_size, seed=4)[0]
    driver = PlanDriver(runner)
    driver.add("a", prompt)
    tokens = [driver.run([("a", prompt, True)]).tokens[0].token_id]
    for _ in range(steps - 1):
        tokens.append(driver.run([("a", tokens[-1:], True)]).tokens[0].token_id)
    return tokens


def _copy(src, dst, edit_config=None):
    shutil.copytree(src, dst)
    if edit_config:
        config = json.loads((dst / "config.json").read_text())
        edit_config(config)
        (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_sharded_checkpoint_matches_single_file(tiny_checkpoint, tmp_path):
    sharded = make_tiny_checkpoint("qwen3", tmp_path / "sharded", max_shard_size="60KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert _greedy(_runner(sharded)) == _greedy(_runner(tiny_checkpoint("qwen3")))


def test_missing_shard_names_the_file(tmp_path):
    sharded = make_tiny_checkpoint("llama", tmp_path / "sharded", max_shard_size="60KB")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (sharded / shard).unlink()
    with pytest.raises(MissingWeightsError, match=shard):
        _runner(sharded)


def test_checkpoint_without_base_prefix_loads(tiny_checkpoint, tmp_path):
    """The Hub's GPT-2 files name tensors `h.0...`, not `transformer.h.0...`."""
    src = tiny_checkpoint("gpt2")
    dst = _copy(src, tmp_path / "gpt2-bare")
    tensors = load_file(dst / "model.safetensors")
    save_file(
        {k.removeprefix("transformer."): v for k, v in tensors.items()}, dst / "model.safetensors"
    )
    assert _greedy(_runner(dst)) == _greedy(_runner(src))


def test_unknown_architecture(tiny_checkpoint, tmp_path):
    def edit(config):
        config["architectures"] = ["FalconForCausalLM"]

    path = _copy(tiny_checkpoint("llama"), tmp_path / "falcon", edit)
    with pytest.raises(UnsupportedArchitectureError, match="FalconForCausalLM.*LlamaForCausalLM"):
        _runner(path)


def test_unsupported_rope_type(tiny_checkpoint, tmp_path):
    def edit(config):
        config["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}

    path = _copy(tiny_checkpoint("llama"), tmp_path / "yarn", edit)
    with pytest.raises(UnsupportedArchitectureError, match="yarn"):
        _runner(path)


def test_missing_weights_file(tiny_checkpoint, tmp_path):
    path = _copy(tiny_checkpoint("llama"), tmp_path / "noweights")
    (path / "model.safetensors").unlink()
    with pytest.raises(MissingWeightsError, match="model.safetensors"):
        _runner(path)


def test_missing_tensor_is_named(tiny_checkpoint, tmp_path):
    path = _copy(tiny_checkpoint("opt"), tmp_path / "notensor")
    tensors = load_file(path / "model.safetensors")
    del tensors["model.decoder.layers.1.fc2.bias"]
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(MissingWeightsError, match=r"model\.decoder\.layers\.1\.fc2\.bias"):
        _runner(path)


def test_shape_mismatch(tiny_checkpoint, tmp_path):
    def edit(config):
        config["intermediate_size"] = 96

    path = _copy(tiny_checkpoint("llama"), tmp_path / "wrongshape", edit)
    with pytest.raises(ModelLoadError, match="shape"):
        _runner(path)


def test_missing_config(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        _runner(tmp_path)


def test_bad_dtype(tiny_checkpoint):
    with pytest.raises(ModelLoadError, match="float64"):
        _runner(tiny_checkpoint("llama"), dtype="float64")


def test_random_weights_need_only_config(tiny_checkpoint, tmp_path):
    path = tmp_path / "config-only"
    path.mkdir()
    shutil.copy(tiny_checkpoint("llama") / "config.json", path / "config.json")
    runner = _runner(path, load_format="random", dtype="bfloat16", seed=3)
    assert runner.info().dtype == "bfloat16"
    params = dict(runner.model.named_parameters())
    assert all(p.dtype == torch.bfloat16 for p in params.values())
    assert torch.equal(params["model.norm.weight"], torch.ones_like(params["model.norm.weight"]))
    assert params["model.embed_tokens.weight"].float().std().item() == pytest.approx(0.02, rel=0.1)
    tokens = _greedy(runner)
    assert all(0 <= t < VOCAB_SIZE for t in tokens)
    assert _greedy(_runner(path, load_format="random", dtype="bfloat16", seed=3)) == tokens


def test_unknown_load_format(tiny_checkpoint):
    with pytest.raises(ModelLoadError, match="load_format"):
        _runner(tiny_checkpoint("llama"), load_format="pickle")


@pytest.mark.parametrize(
    "bad", [{"block_size": 0}, {"num_kv_blocks": 0}, {"kv_cache_memory_fraction": 1.5}]
)
def test_bad_runner_settings(bad, tiny_checkpoint):
    setting = next(iter(bad))
    with pytest.raises(ModelLoadError, match=setting):
        ModelRunner(RunnerConfig(str(tiny_checkpoint("llama")), **bad))
