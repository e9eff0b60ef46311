"""ModelRunner against transformers, token for token, for every tiny model family.

Plans are built by hand (plan_driver.PlanDriver), so these tests pin the worker alone:
packed prefill of prompts of different lengths, decode, and chunked prefill mixed with
another sequence's decode. float32 throughout, so greedy tokens must match exactly.
"""

from __future__ import annotations

import pytest
import torch
from plan_driver import PlanDriver
from tiny_models import ARCHITECTURES, VOCAB_SIZE, hf_greedy, random_prompts

from orca_worker.runner import ModelRunner, RunnerConfig

NEW_TOKENS = 12
LOGPROB_TOL = 1e-3
TOP_LOGPROBS = 3
# CI has CPUs only; on a GPU machine the same comparisons run on CUDA too (float32, no TF32).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _runner(path, device: str, block_size: int = 8) -> ModelRunner:
    config = RunnerConfig(str(path), device=device, block_size=block_size, num_kv_blocks=96)
    return ModelRunner(config)


def _check_logprobs(token, hf_logprobs: torch.Tensor) -> None:
    assert token.logprob == pytest.approx(hf_logprobs[token.token_id].item(), abs=LOGPROB_TOL)
    hf_top = hf_logprobs.topk(TOP_LOGPROBS)
    assert [t.token_id for t in token.top_logprobs] == hf_top.indices.tolist()
    got = [t.logprob for t in token.top_logprobs]
    assert got == pytest.approx(hf_top.values.tolist(), abs=LOGPROB_TOL)


def _assert_margins(hf_logprobs: list[torch.Tensor]) -> None:
    # A near-tie makes greedy equality a coin toss: the checkpoint, not the runner, is at fault.
    margins = [(lp.topk(2).values[0] - lp.topk(2).values[1]).item() for lp in hf_logprobs]
    assert min(margins) > 1e-3, f"tiny model too ambiguous (top-2 margin {min(margins):.1e})"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_packed_prefill_then_decode(arch, device, tiny_checkpoint, hf_model):
    """Three prompts of different lengths prefilled in one step, then decoded together."""
    prompts = random_prompts((5, 17, 33), VOCAB_SIZE, seed=1)
    expected = [hf_greedy(hf_model(arch), p, NEW_TOKENS) for p in prompts]
    for _, logprobs in expected:
        _assert_margins(logprobs)

    driver = PlanDriver(_runner(tiny_checkpoint(arch), device))
    ids = [f"s{i}" for i in range(len(prompts))]
    for seq_id, prompt in zip(ids, prompts, strict=True):
        driver.add(seq_id, prompt, logprobs=True, top_logprobs=TOP_LOGPROBS)
    result = driver.run([(s, p, True) for s, p in zip(ids, prompts, strict=True)])
    outputs = {s: [result.tokens[i]] for i, s in enumerate(ids)}
    for _ in range(NEW_TOKENS - 1):
        result = driver.run([(s, [outputs[s][-1].token_id], True) for s in ids])
        assert [t.seq_id for t in result.tokens] == ids  # plan order
        for token in result.tokens:
            outputs[token.seq_id].append(token)

    for seq_id, (hf_tokens, hf_logprobs) in zip(ids, expected, strict=True):
        assert [t.token_id for t in outputs[seq_id]] == hf_tokens, f"{arch} {seq_id}"
        for token, lp in zip(outputs[seq_id], hf_logprobs, strict=True):
            _check_logprobs(token, lp)
    assert driver.runner.seqs["s0"].sampling.output_token_ids == expected[0][0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_chunked_prefill_mixed_with_decode(arch, device, tiny_checkpoint, hf_model):
    """A's prompt arrives in three chunks, each step also decoding B; C joins mid-way."""
    prompt_a, prompt_b, prompt_c = random_prompts((33, 9, 6), VOCAB_SIZE, seed=2)
    model = hf_model(arch)
    expected = {
        s: hf_greedy(model, p, NEW_TOKENS)[0]
        for s, p in (("a", prompt_a), ("b", prompt_b), ("c", prompt_c))
    }

    driver = PlanDriver(_runner(tiny_checkpoint(arch), device, block_size=4))
    out: dict[str, list[int]] = {"a": [], "b": [], "c": []}

    def record(result):
        for token in result.tokens:
            out[token.seq_id].append(token.token_id)

    driver.add("b", prompt_b)
    record(driver.run([("b", prompt_b, True)]))
    driver.add("a", prompt_a)
    chunks = (prompt_a[:10], prompt_a[10:22], prompt_a[22:])
    for i, chunk in enumerate(chunks):
        if i == 1:
            driver.add("c", prompt_c)
        work = [("b", [out["b"][-1]], True), ("a", chunk, i == len(chunks) - 1)]
        if i == 1:
            work.insert(1, ("c", prompt_c, True))
        elif i == 2:
            work.append(("c", [out["c"][-1]], True))
        result = driver.run(work)
        assert len(result.tokens) == sum(sample for _, _, sample in work)
        record(result)
    while any(len(v) < NEW_TOKENS for v in out.values()):
        record(driver.run([(s, [v[-1]], True) for s, v in out.items() if len(v) < NEW_TOKENS]))

    assert out == expected
