"""The runner's plan handling: bad plans come back as StepResult.error and change nothing;
releases, re-announced (preempted) sequences, empty plans, info()."""

from __future__ import annotations

import time

import pytest
from plan_driver import PlanDriver
from tiny_models import EOS_TOKEN_ID, MAX_POSITIONS, VOCAB_SIZE, hf_greedy, random_prompts

from orca_proto.v1 import worker_pb2 as pb
from orca_worker.runner import ModelRunner, RunnerConfig

NUM_BLOCKS = 32
BLOCK_SIZE = 4


@pytest.fixture
def runner(tiny_checkpoint):
    return ModelRunner(
        RunnerConfig(str(tiny_checkpoint("llama")), block_size=BLOCK_SIZE, num_kv_blocks=NUM_BLOCKS)
    )


@pytest.fixture(scope="module")
def prompt():
    return random_prompts((7,), VOCAB_SIZE, seed=3)[0]


@pytest.fixture(scope="module")
def expected(hf_model, prompt):
    return hf_greedy(hf_model("llama"), prompt, 4)[0]


def _started(runner, prompt) -> tuple[PlanDriver, int]:
    """A driver whose sequence "a" has been prefilled; returns it and a's first token."""
    driver = PlanDriver(runner)
    driver.add("a", prompt)
    return driver, driver.run([("a", prompt, True)]).tokens[0].token_id


def _decode(runner, step_id: int, token: int, position: int, **extra) -> pb.StepResult:
    step = pb.SequenceStep(seq_id="a", start_position=position, token_ids=[token], sample=True)
    return runner.execute(pb.StepPlan(step_id=step_id, steps=[step], **extra))


def test_info_describes_model_and_pool(runner, tiny_checkpoint):
    info = runner.info()
    assert info.model == tiny_checkpoint("llama").name
    assert info.dtype == "float32"
    assert (info.num_kv_blocks, info.block_size) == (NUM_BLOCKS, BLOCK_SIZE)
    assert info.max_model_len == MAX_POSITIONS
    assert list(info.eos_token_ids) == [EOS_TOKEN_ID]
    assert (info.stage, info.tp_rank) == (0, 0)
    assert info.vocab_size == VOCAB_SIZE


# Each bad step targets "b" (3 prompt tokens in its one block) next to a good step of "a".
BAD_STEPS = {
    "unknown sequence": dict(seq_id="nope", start_position=3, token_ids=[5]),
    "no input tokens": dict(seq_id="b", start_position=3, token_ids=[]),
    "hold": dict(seq_id="b", start_position=4, token_ids=[5]),  # past b's one block
    "outside the vocabulary": dict(seq_id="b", start_position=3, token_ids=[VOCAB_SIZE]),
    "outside the pool": dict(
        seq_id="b", start_position=3, token_ids=[5], new_block_ids=[NUM_BLOCKS]
    ),
    "max_model_len": dict(
        seq_id="b",
        start_position=MAX_POSITIONS,
        token_ids=[5],
        new_block_ids=list(range(NUM_BLOCKS)),
    ),
}


@pytest.mark.parametrize("reason", BAD_STEPS)
def test_bad_plan_is_an_error_and_changes_nothing(reason, runner, prompt, expected):
    driver, first = _started(runner, prompt)
    driver.add("b", [3, 4, 5])
    driver.run([("b", [3, 4, 5], False)])
    good = pb.SequenceStep(
        seq_id="a",
        start_position=7,
        token_ids=[first],
        sample=True,
        new_block_ids=[driver.free.pop()],
    )
    bad_plan = pb.StepPlan(
        step_id=9,
        new_seqs=[pb.NewSequence(seq_id="late", prompt_token_ids=[4, 5])],
        steps=[good, pb.SequenceStep(**BAD_STEPS[reason], sample=True)],
        released_seq_ids=["a"] if reason == "unknown sequence" else [],
    )
    result = runner.execute(bad_plan)
    assert reason in result.error and not result.tokens
    # Nothing of the failed plan stuck: no new or released sequence, no block, no token.
    assert set(runner.seqs) == {"a", "b"}
    assert [len(runner.seqs[s].block_ids) for s in "ab"] == [2, 1]
    assert runner.seqs["a"].sampling.output_token_ids == [first]
    # ... and the sequence continues exactly as if the bad plan never came.
    retry = runner.execute(pb.StepPlan(step_id=10, steps=[good]))
    assert retry.error == "" and retry.tokens[0].token_id == expected[1]


def test_duplicate_sequences_are_rejected(runner, prompt):
    _started(runner, prompt)
    again = pb.StepPlan(step_id=1, new_seqs=[pb.NewSequence(seq_id="a", prompt_token_ids=[3])])
    assert "already tracked" in runner.execute(again).error
    step = pb.SequenceStep(seq_id="a", start_position=7, token_ids=[3])
    twice = pb.StepPlan(step_id=1, steps=[step, step])
    assert "twice" in runner.execute(twice).error


def test_non_final_chunk_samples_nothing(runner, prompt, expected):
    driver = PlanDriver(runner)
    driver.add("a", prompt)
    assert not driver.run([("a", prompt[:3], False)]).tokens
    result = driver.run([("a", prompt[3:], True)])
    assert [t.token_id for t in result.tokens] == expected[:1]
    assert result.timings.forward_ms > 0


def test_release_then_reannounce_recomputes(runner, prompt, expected):
    """A preempted sequence comes back with its outputs; recompute gives the same tokens."""
    driver, first = _started(runner, prompt)
    second = driver.run([("a", [first], True)]).tokens[0].token_id
    assert driver.run([], released=("a",)).error == ""
    assert runner.num_active_seqs == 0
    assert "unknown sequence" in _decode(runner, 99, second, 8).error
    driver.add("a", prompt, output=[first, second])
    result = driver.run([("a", prompt + [first, second], True)])
    assert [first, second, result.tokens[0].token_id] == expected[:3]
    assert runner.seqs["a"].sampling.output_token_ids == expected[:3]


def test_empty_plan_and_unknown_release_are_fine(runner):
    result = runner.execute(pb.StepPlan(step_id=7, released_seq_ids=["never-seen"]))
    assert (result.step_id, result.error, len(result.tokens)) == (7, "", 0)


def test_logprobs_only_when_asked(runner, prompt):
    driver = PlanDriver(runner)
    driver.add("plain", prompt)
    driver.add("top", prompt, top_logprobs=2)
    result = driver.run([("plain", prompt, True), ("top", prompt, True)])
    plain, top = result.tokens
    assert plain.logprob == 0.0 and not plain.top_logprobs
    assert top.logprob == 0.0 and len(top.top_logprobs) == 2
    assert top.top_logprobs[0].token_id == top.token_id  # greedy: the most likely one


def test_each_result_says_how_long_the_worker_waited_for_its_plan(tiny_checkpoint):
    """StepTimings.waited_ms: the idle gap since the previous step; 0 after a quiet spell."""
    runner = ModelRunner(RunnerConfig(str(tiny_checkpoint("llama")), num_kv_blocks=32))
    driver = PlanDriver(runner)
    prompt = random_prompts((5,), VOCAB_SIZE, seed=4)[0]
    driver.add("s", prompt)
    first = driver.run([("s", prompt, True)])
    assert first.timings.waited_ms == 0.0  # nothing ran before it
    time.sleep(0.05)
    second = driver.run([("s", [first.tokens[0].token_id], True)])
    assert 40.0 <= second.timings.waited_ms < 1000.0
    runner._last_step_end = time.perf_counter() - 5.0  # a quiet spell, not a stall
    third = driver.run([("s", [second.tokens[0].token_id], True)])
    assert third.timings.waited_ms == 0.0
