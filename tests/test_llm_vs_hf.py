"""orca.LLM against transformers, token for token, on tiny random checkpoints of every family.

Each case runs a batch of prompts of different lengths through the whole engine (scheduler
core + worker runner) under one scheduling regime, and compares greedy tokens with HF
`generate` and logprobs with HF's logits.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import ARCHITECTURES, assert_matches_hf, make_tiny_checkpoint, random_prompts
from transformers import AutoModelForCausalLM

from orca import LLM, SamplingParams

MAX_NEW_TOKENS = 10
PROMPT_LENGTHS = (5, 23, 40, 9)

# name -> LLM keyword arguments: the regimes the engine must be exact under.
REGIMES = {
    "default": {},
    # A token budget below the prompt lengths forces chunked prefill mixed with decodes.
    "chunked_prefill": {"max_num_batched_tokens": 8},
    # Few blocks force preemption by recompute (block_size 4: 6 blocks hold 24 tokens).
    "preemption": {"num_kv_blocks": 16, "block_size": 4},
    # The paper's policy: reserve prompt + max_tokens at admission.
    "reserve": {"kv_policy": "reserve"},
    # Overlapped scheduling: decodes scheduled a plan ahead, fed the worker's last token.
    "overlap": {"overlap": True},
    "overlap_chunked_preemption": {
        "overlap": True,
        "max_num_batched_tokens": 8,
        "num_kv_blocks": 16,
        "block_size": 4,
    },
}


@pytest.fixture(scope="module", params=ARCHITECTURES)
def checkpoint(request, tmp_path_factory):
    """(arch, path, HF model) of one tiny random float32 checkpoint."""
    path = make_tiny_checkpoint(request.param, tmp_path_factory.mktemp(request.param))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return request.param, path, model


@pytest.mark.parametrize("regime", list(REGIMES))
def test_greedy_equals_transformers(checkpoint, regime):
    _, path, model = checkpoint
    llm = LLM(model=str(path), dtype="float32", **REGIMES[regime])
    prompts = random_prompts(PROMPT_LENGTHS, model.config.vocab_size)
    params = SamplingParams(max_tokens=MAX_NEW_TOKENS, temperature=0.0, ignore_eos=True, logprobs=3)
    outputs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
    assert_matches_hf(model, prompts, outputs, MAX_NEW_TOKENS)
    if regime == "preemption":
        assert llm.scheduler.num_preemptions > 0, "the regime was meant to force preemption"
    assert llm.scheduler.block_manager.num_free_blocks == llm.scheduler.config.num_kv_blocks


def test_prefix_cache_hits_stay_exact(checkpoint):
    """Prompts sharing a long prefix reuse cached blocks and still match HF."""
    _, path, model = checkpoint
    llm = LLM(model=str(path), dtype="float32", block_size=4)
    shared = random_prompts((24,), model.config.vocab_size, seed=1)[0]
    tails = random_prompts((3, 7, 1), model.config.vocab_size, seed=2)
    prompts = [shared + tail for tail in tails]
    params = SamplingParams(max_tokens=MAX_NEW_TOKENS, temperature=0.0, ignore_eos=True)
    first = llm.generate(prompt_token_ids=prompts[:1], sampling_params=params)
    hits_before = llm.scheduler.block_manager.num_cache_hits
    rest = llm.generate(prompt_token_ids=prompts[1:], sampling_params=params)
    assert llm.scheduler.block_manager.num_cache_hits > hits_before
    assert_matches_hf(model, prompts, first + rest, MAX_NEW_TOKENS)
