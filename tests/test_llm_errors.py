"""Bad input to the offline engine: a clear exception type and message, and the engine
keeps working afterwards (nothing breaks inside the iteration loop)."""

from __future__ import annotations

import json

import pytest
from tiny_models import make_tiny_checkpoint

from orca import LLM, SamplingParams
from orca.llm import InvalidPromptError
from orca.sampling_params import InvalidSamplingParams
from orca_scheduler.core.errors import PromptTooLongError
from orca_worker.errors import MissingWeightsError, UnsupportedArchitectureError


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return make_tiny_checkpoint("llama", tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(model=str(llama_dir), dtype="float32")


def _copy_checkpoint(src, dst, edit_config=None, drop_weights=False):
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if drop_weights and f.suffix == ".safetensors":
            continue
        (dst / f.name).write_bytes(f.read_bytes())
    if edit_config:
        config = json.loads((dst / "config.json").read_text())
        edit_config(config)
        (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_unknown_architecture(llama_dir, tmp_path):
    def rename(config):
        config["architectures"] = ["FancyNewForCausalLM"]

    bad = _copy_checkpoint(llama_dir, tmp_path / "bad", edit_config=rename)
    with pytest.raises(UnsupportedArchitectureError, match="FancyNewForCausalLM"):
        LLM(model=str(bad))


def test_missing_weights(llama_dir, tmp_path):
    bad = _copy_checkpoint(llama_dir, tmp_path / "noweights", drop_weights=True)
    with pytest.raises(MissingWeightsError, match="safetensors"):
        LLM(model=str(bad))


def test_prompt_longer_than_context_then_keeps_serving(llm):
    too_long = [5] * (llm.worker_info.max_model_len + 1)
    with pytest.raises(PromptTooLongError, match="max_model_len|context"):
        llm.generate(
            prompt_token_ids=[[5, 6, 7], too_long], sampling_params=SamplingParams(max_tokens=2)
        )
    assert not llm.scheduler.has_unfinished(), "a rejected batch must leave nothing behind"
    out = llm.generate(
        prompt_token_ids=[[5, 6, 7]], sampling_params=SamplingParams(max_tokens=3, ignore_eos=True)
    )
    assert len(out[0].token_ids) == 3


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -5}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"logprobs": 50}, "logprobs"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"presence_penalty": 3.0}, "presence_penalty"),
    ],
)
def test_invalid_sampling_params(kwargs, field):
    with pytest.raises(InvalidSamplingParams, match=field):
        SamplingParams(**kwargs)


def test_bad_prompts(llm):
    with pytest.raises(InvalidPromptError, match="empty"):
        llm.generate(prompt_token_ids=[[]])
    with pytest.raises(InvalidPromptError, match="vocabulary"):
        llm.generate(prompt_token_ids=[[1, 10**9]])
    with pytest.raises(ValueError, match="SamplingParams"):
        llm.generate(prompt_token_ids=[[1], [2]], sampling_params=[SamplingParams()])
    assert not llm.scheduler.has_unfinished()
