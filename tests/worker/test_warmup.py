"""The worker's warm-up plans: valid, within the pool, every sequence released, and a
runner that ran them still equals HF token for token."""

from __future__ import annotations

import pytest
import torch
from plan_driver import PlanDriver
from tiny_models import VOCAB_SIZE, hf_greedy, random_prompts

from orca_worker.batch import BatchLimits, PreparedBatch, commit, prepare_batch
from orca_worker.runner import ModelRunner, RunnerConfig
from orca_worker.warmup import PROMPT_LENGTHS, SEQ_PREFIX, warmup_plans

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _run_on_host(plans, limits):
    """Validate every plan in order as a worker would (no model): the tables it builds."""
    seqs: dict = {}
    batches: list[PreparedBatch] = []
    for plan in plans:
        batch = prepare_batch(plan, seqs, limits, torch.device("cpu"))
        commit(batch, seqs, [1] * len(batch.sampled_seq_ids))
        batches.append(batch)
    return seqs, batches


def test_plans_cover_the_lengths_and_release_everything():
    limits = BatchLimits(vocab_size=100, max_model_len=4096, num_kv_blocks=1000, block_size=16)
    plans = warmup_plans(1000, 16, 4096, 100)
    assert len(plans) == len(PROMPT_LENGTHS) + 2
    seqs, batches = _run_on_host(plans, limits)
    assert seqs == {}  # the last plan releases them all
    token_counts = [int(b.input_ids.numel()) for b in batches if b.input_ids is not None]
    assert token_counts[: len(PROMPT_LENGTHS)] == list(PROMPT_LENGTHS)
    assert token_counts[-1] == len(PROMPT_LENGTHS) + PROMPT_LENGTHS[5]  # decodes + a prefill
    blocks = [b for batch in batches for t in batch.block_tables.values() for b in t]
    assert all(0 <= b < 1000 for b in blocks)
    per_seq = {s: t for batch in batches for s, t in batch.block_tables.items()}
    owned = [b for table in per_seq.values() for b in table]
    assert len(owned) == len(set(owned))  # no block shared between warm-up sequences
    assert all(s.startswith(SEQ_PREFIX) for s in per_seq)


@pytest.mark.parametrize("num_blocks,max_len", [(3, 4096), (1000, 20), (0, 4096)])
def test_small_pools_and_models_get_fewer_plans(num_blocks, max_len):
    limits = BatchLimits(
        vocab_size=5, max_model_len=max_len, num_kv_blocks=num_blocks, block_size=16
    )
    plans = warmup_plans(num_blocks, 16, max_len, 5)
    seqs, _ = _run_on_host(plans, limits)
    assert seqs == {}
    assert len(plans) < len(PROMPT_LENGTHS) + 2


@pytest.mark.parametrize("device", DEVICES)
def test_a_warmed_up_runner_still_equals_hf(device, tiny_checkpoint, hf_model):
    """The warm-up writes KV blocks that requests then reuse: the output must not notice.
    (On CUDA the runner warms up in its constructor; a second warm-up must work too.)"""
    path = tiny_checkpoint("llama")
    runner = ModelRunner(RunnerConfig(str(path), device=device, block_size=8, num_kv_blocks=96))
    assert runner.warm_up() > 0
    assert runner.seqs == {}
    prompt = random_prompts((21,), VOCAB_SIZE, seed=3)[0]
    expected, _ = hf_greedy(hf_model("llama"), prompt, 6)
    driver = PlanDriver(runner)
    driver.add("s", prompt)
    tokens = [driver.run([("s", prompt, True)]).tokens[0].token_id]
    for _ in range(5):
        tokens.append(driver.run([("s", [tokens[-1]], True)]).tokens[0].token_id)
    assert tokens == expected
