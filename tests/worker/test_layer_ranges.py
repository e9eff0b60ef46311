"""The split forward a pipeline stage uses: embed, any run of layer ranges, finish gives
exactly the whole forward, for every model family."""

from __future__ import annotations

import pytest
import torch
from tiny_models import ARCHITECTURES, VOCAB_SIZE, random_prompts

from orca_proto.v1 import worker_pb2 as pb
from orca_worker.batch import prepare_batch
from orca_worker.runner import ModelRunner, RunnerConfig


@pytest.mark.parametrize("arch", ARCHITECTURES)
@torch.inference_mode()
def test_layer_by_layer_equals_the_whole_forward(arch, tiny_checkpoint):
    runner = ModelRunner(RunnerConfig(str(tiny_checkpoint(arch)), num_kv_blocks=8, block_size=8))
    prompt = random_prompts((13,), VOCAB_SIZE, seed=7)[0]
    plan = pb.StepPlan(
        new_seqs=[pb.NewSequence(seq_id="a", prompt_token_ids=prompt, block_ids=[3, 1])],
        steps=[pb.SequenceStep(seq_id="a", token_ids=prompt, sample=True)],
    )
    batch = prepare_batch(plan, {}, runner.limits, runner.device)
    model, ids, pos, meta = runner.model, batch.input_ids, batch.positions, batch.meta
    whole = model(ids, pos, meta)
    carry = model.embed(ids, pos)
    for i in range(model.config.num_layers):  # one stage per layer
        carry = model.run_layers(carry, pos, meta, range(i, i + 1))
        assert len(carry) == model.carried_tensors
    assert torch.equal(model.finish(carry), whole)
