"""Sampling through the whole engine: seeds are batch- and preemption-independent, stop
tokens end generation, penalties and filters reach the worker."""

from __future__ import annotations

import pytest
from tiny_models import make_tiny_checkpoint

from orca import LLM, SamplingParams

SEEDED = SamplingParams(
    max_tokens=12, temperature=1.0, top_k=50, top_p=0.9, seed=1234, ignore_eos=True
)
PROMPT = [7, 8, 9, 10, 11]
OTHERS = [[20 + i] * (3 + 5 * i) for i in range(5)]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return make_tiny_checkpoint("llama", tmp_path_factory.mktemp("llama"))


def _unseeded(max_tokens: int = 12) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=1.0, ignore_eos=True)


def test_seeded_request_is_batch_independent(llama_dir):
    llm = LLM(model=str(llama_dir), dtype="float32")
    alone = llm.generate(prompt_token_ids=[PROMPT], sampling_params=SEEDED)[0].token_ids
    batch = [*OTHERS[:2], PROMPT, *OTHERS[2:]]
    params = [_unseeded(), _unseeded(), SEEDED, _unseeded(), _unseeded(), _unseeded()]
    in_batch = llm.generate(prompt_token_ids=batch, sampling_params=params)[2].token_ids
    assert in_batch == alone
    again = llm.generate(prompt_token_ids=[PROMPT], sampling_params=SEEDED)[0].token_ids
    assert again == alone


def test_seeded_request_survives_preemption(llama_dir):
    roomy = LLM(model=str(llama_dir), dtype="float32")
    expected = roomy.generate(prompt_token_ids=[PROMPT], sampling_params=SEEDED)[0].token_ids
    tight = LLM(model=str(llama_dir), dtype="float32", num_kv_blocks=14, block_size=4)
    batch = [PROMPT, *OTHERS]
    params = [SEEDED] + [_unseeded(20)] * len(OTHERS)
    outputs = tight.generate(prompt_token_ids=batch, sampling_params=params)
    assert tight.scheduler.num_preemptions > 0
    assert outputs[0].token_ids == expected


def test_stop_token_ids_end_generation(llama_dir):
    llm = LLM(model=str(llama_dir), dtype="float32")
    greedy = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    full = llm.generate(prompt_token_ids=[PROMPT], sampling_params=greedy)[0].token_ids
    stop_at = full[4]
    first = full.index(stop_at)
    stopped = llm.generate(
        prompt_token_ids=[PROMPT],
        sampling_params=SamplingParams(
            max_tokens=12, temperature=0.0, ignore_eos=True, stop_token_ids=[stop_at]
        ),
    )[0]
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == full[: first + 1]


def test_filters_never_emit_excluded_tokens(llama_dir):
    """top_k=1 with temperature is greedy: every sampled token is the argmax."""
    llm = LLM(model=str(llama_dir), dtype="float32")
    greedy = llm.generate(
        prompt_token_ids=[PROMPT],
        sampling_params=SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True),
    )
    top1 = llm.generate(
        prompt_token_ids=[PROMPT] * 3,
        sampling_params=SamplingParams(max_tokens=10, temperature=2.0, top_k=1, ignore_eos=True),
    )
    assert all(o.token_ids == greedy[0].token_ids for o in top1)


def test_frequency_penalty_changes_greedy_output(llama_dir):
    llm = LLM(model=str(llama_dir), dtype="float32")
    plain = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    penalized = SamplingParams(
        max_tokens=24, temperature=0.0, ignore_eos=True, frequency_penalty=2.0
    )
    a, b = llm.generate(prompt_token_ids=[PROMPT, PROMPT], sampling_params=[plain, penalized])
    assert len(set(b.token_ids)) >= len(set(a.token_ids))
    assert a.token_ids != b.token_ids
