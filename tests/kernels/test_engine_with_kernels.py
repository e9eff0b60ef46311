"""orca.LLM with kernels="triton" against transformers: the Triton attention backend (run in
Triton's CPU interpreter, see conftest.py) must give HF's greedy tokens."""

from __future__ import annotations

import os

import pytest
import torch
from tiny_models import assert_matches_hf, make_tiny_checkpoint, random_prompts
from transformers import AutoModelForCausalLM

import orca_worker.triton_attention as triton_attention
from orca import LLM, SamplingParams
from orca_worker.errors import ModelLoadError
from orca_worker.runner import ModelRunner, RunnerConfig, resolve_kernels

MAX_NEW_TOKENS = 6
# The engine's device: the CPU (the interpreter) in CI; cuda on a GPU machine (conftest.py).
DEVICE = os.environ.get("ORCA_KERNEL_TEST_DEVICE", "cpu")
# A small pool: on a GPU the default takes most of its memory, and the engines stay alive.
KV_BLOCKS = 512


def triton_llm(path, **kwargs) -> LLM:
    """The engine on `path` with the Triton kernels (float32, on DEVICE, a small pool)."""
    return LLM(
        model=str(path),
        dtype="float32",
        kernels="triton",
        device=DEVICE,
        num_kv_blocks=KV_BLOCKS,
        **kwargs,
    )


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """(path, HF model) of the tiny random llama checkpoint."""
    path = make_tiny_checkpoint("llama", tmp_path_factory.mktemp("llama"))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return path, model


@pytest.fixture
def kernel_calls(monkeypatch):
    """The backend's Triton attention launches as (kernel, rows) (so a silent fallback fails
    the test)."""
    calls = []
    for kernel in ("paged_prefill_attention", "paged_decode_attention"):
        real = getattr(triton_attention, kernel)

        def counted(*args, _real=real, _kernel=kernel, **kwargs):
            calls.append((_kernel, args[0].shape[0]))
            return _real(*args, **kwargs)

        monkeypatch.setattr(triton_attention, kernel, counted)
    return calls


@pytest.mark.parametrize(
    "regime", [{}, {"max_num_batched_tokens": 8}], ids=["default", "chunked_prefill"]
)
def test_triton_greedy_equals_transformers(llama, kernel_calls, regime):
    path, model = llama
    llm = triton_llm(path, **regime)
    prompts = random_prompts((5, 17, 1, 9), model.config.vocab_size)
    params = SamplingParams(max_tokens=MAX_NEW_TOKENS, temperature=0.0, ignore_eos=True)
    outputs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
    assert_matches_hf(model, prompts, outputs, MAX_NEW_TOKENS)
    kernels = {kernel for kernel, _ in kernel_calls}
    # Small decode-only steps take the split-K kernel, steps with prefill the prefill kernel.
    assert kernels == {"paged_prefill_attention", "paged_decode_attention"}


def test_decode_steps_can_be_kept_on_the_prefill_kernel(llama, kernel_calls, monkeypatch):
    path, model = llama
    monkeypatch.setenv(triton_attention.DECODE_ATTENTION_ENV, "prefill")
    llm = triton_llm(path)
    prompts = random_prompts((5, 9), model.config.vocab_size)
    params = SamplingParams(max_tokens=MAX_NEW_TOKENS, temperature=0.0, ignore_eos=True)
    outputs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
    assert_matches_hf(model, prompts, outputs, MAX_NEW_TOKENS)
    assert {kernel for kernel, _ in kernel_calls} == {"paged_prefill_attention"}


def test_triton_prefix_cache_hit(llama, kernel_calls):
    path, model = llama
    llm = triton_llm(path, block_size=4)
    shared = random_prompts((12,), model.config.vocab_size, seed=1)[0]
    tails = random_prompts((3, 1), model.config.vocab_size, seed=2)
    prompts = [shared + tail for tail in tails]
    params = SamplingParams(max_tokens=MAX_NEW_TOKENS, temperature=0.0, ignore_eos=True)
    first = llm.generate(prompt_token_ids=prompts[:1], sampling_params=params)
    hits_before = llm.scheduler.block_manager.num_cache_hits
    rest = llm.generate(prompt_token_ids=prompts[1:], sampling_params=params)
    assert llm.scheduler.block_manager.num_cache_hits > hits_before
    assert_matches_hf(model, prompts, first + rest, MAX_NEW_TOKENS)
    assert kernel_calls


def test_unknown_kernels_rejected(llama):
    path, _ = llama
    with pytest.raises(ModelLoadError, match="kernels"):
        ModelRunner(RunnerConfig(model_dir=str(path), kernels="cuda"))


def test_sliding_window_falls_back_to_torch(tmp_path, kernel_calls):
    """The kernels have no window: a windowed model runs the torch backend and stays exact."""
    path = make_tiny_checkpoint("mistral", tmp_path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    llm = triton_llm(path)
    prompts = random_prompts((30, 7), model.config.vocab_size)
    params = SamplingParams(max_tokens=MAX_NEW_TOKENS, temperature=0.0, ignore_eos=True)
    outputs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
    assert_matches_hf(model, prompts, outputs, MAX_NEW_TOKENS)
    assert not kernel_calls


@pytest.mark.parametrize("arch", ["llama3-tied", "qwen3", "gpt2", "opt"])
def test_fused_layers_equal_transformers(tmp_path, arch):
    """kernels="triton" switches norms, rotary and activations to orca_kernels (interpreted
    here): every family's greedy tokens still equal HF's, decode steps included."""
    path = make_tiny_checkpoint(arch, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    llm = triton_llm(path)
    switched = [m for m in llm.executor.runner.model.modules() if getattr(m, "fused", False)]
    assert switched, "no layer uses the fused kernels"
    prompts = random_prompts((11, 3, 6), model.config.vocab_size)
    params = SamplingParams(max_tokens=MAX_NEW_TOKENS, temperature=0.0, ignore_eos=True)
    outputs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
    assert_matches_hf(model, prompts, outputs, MAX_NEW_TOKENS)


def test_auto_kernels_resolve_by_device():
    assert resolve_kernels("auto", torch.device("cpu")) == "torch"
    assert resolve_kernels("torch", torch.device("cuda")) == "torch"
    assert resolve_kernels("triton", torch.device("cpu")) == "triton"
    if torch.cuda.is_available():
        assert resolve_kernels("auto", torch.device("cuda")) == "triton"
