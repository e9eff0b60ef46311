"""CUDA-graph decode steps: the bucket ladder, the padded static inputs, and the engine's
greedy equality with HF when decode steps go through them. On the CPU (the interpreter) the
static-buffer forward runs eagerly (`capture=False`): the same padding, no graph; with
ORCA_KERNEL_TEST_DEVICE=cuda the graphs are captured and replayed."""

from __future__ import annotations

import os

import pytest
import torch
from tiny_models import assert_matches_hf, make_tiny_checkpoint, random_prompts
from transformers import AutoModelForCausalLM

from orca import LLM, SamplingParams
from orca_worker.cuda_graphs import DecodeGraphs, graph_batch_sizes, pick_batch_size

DEVICE = os.environ.get("ORCA_KERNEL_TEST_DEVICE", "cpu")
MAX_NEW_TOKENS = 7


def test_ladder_ends_at_the_maximum_and_covers_every_size():
    assert graph_batch_sizes(0) == []
    assert graph_batch_sizes(1) == [1]
    assert graph_batch_sizes(5) == [1, 2, 4, 5]
    sizes = graph_batch_sizes(256)
    assert sizes[0] == 1 and sizes[-1] == 256 and sizes == sorted(set(sizes))
    for n in range(1, 257):
        size = pick_batch_size(n, sizes)
        assert size is not None and size >= n
        assert size - n <= max(n // 4, 4)  # padding stays small
    assert pick_batch_size(257, sizes) is None


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_decode_steps_through_graphs_equal_transformers(tmp_path, arch):
    path = make_tiny_checkpoint(arch, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    llm = LLM(
        model=str(path),
        dtype="float32",
        kernels="triton",
        device=DEVICE,
        block_size=4,
        num_kv_blocks=512,  # on a GPU the default pool would take most of its memory
        cuda_graph_max_batch=0,
    )
    runner = llm.executor.runner
    assert runner.graphs is None  # turned off: installed by hand below
    graphs = DecodeGraphs(
        runner.decode_logits,
        max_batch=4,
        max_blocks=-(-runner.model_config.max_position_embeddings // 4),
        block_size=4,
        device=runner.device,
        capture=runner.device.type == "cuda",
    )
    runner.graphs = graphs
    sizes = []
    real_run = graphs.run

    def counted(batch, size):
        sizes.append((batch.meta.num_seqs, size))
        return real_run(batch, size)

    graphs.run = counted
    # 3 sequences decode padded to 4; 5 exceed the largest graph and run eagerly.
    for lengths in ((5, 13, 2), (3, 8, 1, 6, 11)):
        prompts = random_prompts(lengths, model.config.vocab_size, seed=len(lengths))
        params = SamplingParams(max_tokens=MAX_NEW_TOKENS, temperature=0.0, ignore_eos=True)
        outputs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
        assert_matches_hf(model, prompts, outputs, MAX_NEW_TOKENS)
    assert (3, 4) in sizes
    assert all(n <= 4 for n, _ in sizes)
