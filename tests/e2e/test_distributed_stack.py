"""Tensor- and pipeline-parallel workers and several pipelines through the whole stack
(gateway → Redis → scheduler → gRPC → workers over gloo): greedy outputs identical to the
single-process offline engine on the same checkpoint."""

from __future__ import annotations

import asyncio
import shutil

import httpx
import pytest
from stack_testing import e2e_serve_config
from tiny_models import make_tiny_checkpoint, random_prompts

from orca import LLM, SamplingParams
from orca.launcher import LocalStack, ServeConfig

MAX_TOKENS = 8
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# (checkpoint, tp, pp, pipelines)
TOPOLOGIES = [
    ("demo", 2, 1, 1),
    ("demo", 1, 2, 1),
    ("demo", 2, 2, 1),
    ("demo", 1, 1, 2),
    ("gpt2", 2, 1, 1),
    ("gpt2", 1, 2, 1),
]


@pytest.fixture(scope="module")
def checkpoints(demo_model_dir, tmp_path_factory):
    """The demo Llama (GQA) and a tiny GPT-2 that borrows the demo tokenizer (the gateway
    needs one; prompts are token ids below the GPT-2's vocabulary)."""
    gpt2 = make_tiny_checkpoint("gpt2", tmp_path_factory.mktemp("gpt2") / "tiny-gpt2")
    for name in TOKENIZER_FILES:
        shutil.copy(demo_model_dir / name, gpt2 / name)
    return {"demo": demo_model_dir, "gpt2": gpt2}


@pytest.fixture(scope="module")
def expected(checkpoints):
    """checkpoint -> (prompts, offline texts) from the single-process engine."""
    out = {}
    for name, path in checkpoints.items():
        prompts = random_prompts((5, 17, 33, 9, 26, 3), 384, seed=11)
        llm = LLM(model=str(path), dtype="float32")
        params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
        out[name] = (
            prompts,
            [o.text for o in llm.generate(prompt_token_ids=prompts, sampling_params=params)],
        )
    return out


def stack_config(path, tmp_path, **kwargs) -> ServeConfig:
    """`orca serve` of `path` in float32 on free ports, logs under `tmp_path`."""
    return e2e_serve_config(path, tmp_path / "logs", 240, **kwargs)


async def _complete_all(base_url: str, model: str, prompts: list[list[int]]) -> list[dict]:
    async with httpx.AsyncClient(timeout=120) as client:

        async def one(prompt):
            body = {
                "model": model,
                "prompt": prompt,
                "max_tokens": MAX_TOKENS,
                "temperature": 0,
                "ignore_eos": True,
            }
            response = await client.post(base_url + "/completions", json=body)
            assert response.status_code == 200, response.text
            return response.json()

        return await asyncio.gather(*(one(p) for p in prompts))


@pytest.mark.parametrize("name, tp, pp, pipelines", TOPOLOGIES)
def test_parallel_stack_equals_single_process(
    checkpoints, expected, tmp_path, name, tp, pp, pipelines
):
    path = checkpoints[name]
    config = stack_config(path, tmp_path, tp=tp, pp=pp, pipelines=pipelines)
    prompts, texts = expected[name]
    with LocalStack(config) as stack:
        models = httpx.get(stack.base_url + "/models", timeout=10).json()
        assert models["data"][0]["id"] == path.name
        assert models["data"][0]["topology"] == {"pipelines": pipelines, "pp": pp, "tp": tp}
        metrics = httpx.get(stack.base_url.removesuffix("/v1") + "/metrics", timeout=10).text
        assert f"orca_pipeline_parallel_size {float(pp)}" in metrics
        assert f"orca_tensor_parallel_size {float(tp)}" in metrics
        replies = asyncio.run(_complete_all(stack.base_url, path.name, prompts))
        scheduler_log = (stack.log_dir / "scheduler.log").read_text()
    for reply, text in zip(replies, texts, strict=True):
        assert reply["usage"]["completion_tokens"] == MAX_TOKENS
        assert reply["choices"][0]["text"] == text
    if pp > 1:
        assert "in_flight=2" in scheduler_log, "pp=2 must keep two plans in flight"


def test_overlapped_stack_equals_single_process(checkpoints, expected, tmp_path):
    """`orca serve --overlap`: the scheduler keeps two plans in flight on one worker (the
    second's decodes fed the worker's last sampled token), and every text is unchanged."""
    path = checkpoints["demo"]
    config = stack_config(path, tmp_path, overlap=True)
    prompts, texts = expected["demo"]
    with LocalStack(config) as stack:
        replies = asyncio.run(_complete_all(stack.base_url, path.name, prompts))
        scheduler_log = (stack.log_dir / "scheduler.log").read_text()
    assert [r["choices"][0]["text"] for r in replies] == texts
    assert "in_flight=2" in scheduler_log, "overlap must keep two plans in flight"


def test_overlap_needs_single_worker_pipelines(capsys):
    from orca.cli import main

    assert main(["serve", "--model", "x", "--overlap", "--tp", "2"]) == 2
    assert "--overlap needs --tp 1 --pp 1" in capsys.readouterr().err
