"""orca.LLM's step-level API (add_request / step / has_unfinished): requests that join
while others run get the same tokens as one generate() call."""

from __future__ import annotations

import pytest
from tiny_models import make_tiny_checkpoint, random_prompts

from orca import LLM, SamplingParams
from orca.llm import InvalidPromptError


def test_requests_joining_mid_run_match_generate(tmp_path):
    path = make_tiny_checkpoint("llama", tmp_path)
    llm = LLM(model=str(path), dtype="float32")
    prompts = random_prompts((7, 3, 12), llm.worker_info.vocab_size)
    params = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)
    want = [o.token_ids for o in llm.generate(prompt_token_ids=prompts, sampling_params=params)]

    assert llm.step() == []  # nothing added: nothing to run
    got: dict[str, list[int]] = {}
    order = [llm.add_request(prompts[0], params)]
    steps = 0
    while llm.has_unfinished():
        if steps == 2:  # the others join while the first is decoding
            order += [llm.add_request(p, params) for p in prompts[1:]]
        for update in llm.step():
            got.setdefault(update.request_id, []).extend(update.new_token_ids)
        steps += 1
    assert [got[r] for r in order] == want


def test_add_request_rejects_bad_prompts(tmp_path):
    path = make_tiny_checkpoint("llama", tmp_path)
    llm = LLM(model=str(path), dtype="float32")
    with pytest.raises(InvalidPromptError):
        llm.add_request([])
    with pytest.raises(InvalidPromptError):
        llm.add_request([llm.worker_info.vocab_size])
    assert not llm.has_unfinished()


def test_overlap_stops_where_the_plain_loop_stops(tmp_path):
    """A stop token ends a request while its next step is already scheduled: that step's
    token is dropped, and the outputs equal the non-overlapped engine's."""
    path = make_tiny_checkpoint("llama", tmp_path)
    plain = LLM(model=str(path), dtype="float32")
    prompts = random_prompts((6, 14, 3), plain.worker_info.vocab_size, seed=5)
    free = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    stops = [o.token_ids[2] for o in plain.generate(prompt_token_ids=prompts, sampling_params=free)]
    params = [
        SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, stop_token_ids=[t])
        for t in stops
    ]
    want = plain.generate(prompt_token_ids=prompts, sampling_params=params)
    overlapped = LLM(model=str(path), dtype="float32", overlap=True)
    got = overlapped.generate(prompt_token_ids=prompts, sampling_params=params)
    assert [(o.token_ids, o.finish_reason) for o in got] == [
        (o.token_ids, o.finish_reason) for o in want
    ]
    assert all(o.finish_reason == "stop" for o in got)
    sched = overlapped.scheduler
    assert sched.block_manager.num_free_blocks == sched.config.num_kv_blocks
