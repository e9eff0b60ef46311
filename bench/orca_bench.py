"""Orca's own measurements through the offline API (`orca.LLM`): the trace and batch-1 decode."""

from __future__ import annotations

import inspect
import random
import statistics
import time
from typing import Any

from bench.common import progress, sync
from bench.trace import TraceRequest, trace


def make_llm(model_dir: str, device: str, dtype: str, **engine_kwargs: Any) -> tuple[Any, dict]:
    """An `orca.LLM` over `model_dir` with random weights; (llm, the kwargs it was given).

    Keyword arguments the engine does not (yet) take are dropped, and None values are left
    to the engine's defaults, so the bench runs against any version of the API.
    """
    from orca import LLM

    kwargs = {"dtype": dtype, "device": device, "load_format": "random", **engine_kwargs}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    params = inspect.signature(LLM.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        dropped = sorted(k for k in kwargs if k not in params)
        if dropped:
            progress(f"orca.LLM takes no {', '.join(dropped)}: left out")
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return LLM(model=model_dir, **kwargs), kwargs


def greedy(max_tokens: int) -> Any:
    """Greedy sampling of exactly `max_tokens` tokens (EOS ignored), as the trace asks."""
    from orca import SamplingParams

    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


def warm_up(llm: Any, vocab_size: int, n: int = 16) -> float:
    """Run a few requests unlike the trace's (another seed: no prefix-cache hits later)."""
    requests = trace(n, vocab_size, seed=12345, out_hi=16)
    t = time.perf_counter()
    llm.generate(
        prompt_token_ids=[r.prompt_token_ids for r in requests],
        sampling_params=[greedy(r.output_len) for r in requests],
    )
    return time.perf_counter() - t


def offline_trace(llm: Any, requests: list[TraceRequest], device: str) -> dict[str, Any]:
    """Every request at t=0 through one `generate` call: throughput of the whole trace."""
    stats = _step_stats(llm)
    sync(device)
    if stats is not None:
        stats.reset()
    t0 = time.perf_counter()
    outs = llm.generate(
        prompt_token_ids=[r.prompt_token_ids for r in requests],
        sampling_params=[greedy(r.output_len) for r in requests],
    )
    sync(device)
    seconds = time.perf_counter() - t0
    generated = [len(o.token_ids) for o in outs]
    wrong = sum(1 for g, r in zip(generated, requests, strict=True) if g != r.output_len)
    useful = sum(min(g, r.output_len) for g, r in zip(generated, requests, strict=True))
    return {
        "seconds": seconds,
        "req_s": len(requests) / seconds,
        "out_tok_s": useful / seconds,
        "total_tok_s": (useful + sum(len(r.prompt_token_ids) for r in requests)) / seconds,
        "wrong_lengths": wrong,
        # The largest batch the scheduler ran (warm-up included): how many requests fit.
        "peak_running": getattr(getattr(llm, "scheduler", None), "peak_running", None),
        # Where the steps' time went (wall around each plan, the worker's phases); the rest
        # of `seconds` is the engine's own host work (scheduling, folding results).
        "step_stats": stats.summary() if stats is not None else None,
    }


def _step_stats(llm: Any) -> Any:
    """The engine's StepStats, if this version of it keeps them."""
    return getattr(getattr(llm, "executor", None), "stats", None)


def _one_request_s(llm: Any, prompt: list[int], max_tokens: int, device: str) -> float:
    sync(device)
    t = time.perf_counter()
    out = llm.generate(prompt_token_ids=[prompt], sampling_params=greedy(max_tokens))
    sync(device)
    seconds = time.perf_counter() - t
    if len(out[0].token_ids) != max_tokens:
        raise RuntimeError(f"asked for {max_tokens} tokens, got {len(out[0].token_ids)}")
    return seconds


def batch1_decode(
    llm: Any,
    device: str,
    vocab_size: int,
    prompt_len: int = 128,
    new_tokens: int = 128,
    repeats: int = 3,
) -> dict[str, Any]:
    """One request at a time: ms per token as the HF peer measures it (whole generate over
    `new_tokens`), and decode alone ((time of 1 + new_tokens) - (time of 1)) / new_tokens.

    Each run gets a fresh random prompt so the prefix cache never skips the prefill.
    """
    rng = random.Random(7)

    def prompt() -> list[int]:
        return [rng.randrange(10, vocab_size) for _ in range(prompt_len)]

    _one_request_s(llm, prompt(), new_tokens, device)  # warm-up
    whole, prefill_only, with_decode = [], [], []
    stats = _step_stats(llm)
    for _ in range(repeats):
        whole.append(_one_request_s(llm, prompt(), new_tokens, device))
        prefill_only.append(_one_request_s(llm, prompt(), 1, device))
        if stats is not None:
            stats.reset()
        with_decode.append(_one_request_s(llm, prompt(), 1 + new_tokens, device))
    prefill_s = statistics.median(prefill_only)
    decode_s = (statistics.median(with_decode) - prefill_s) / new_tokens
    return {
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "ms_per_token": statistics.median(whole) / new_tokens * 1e3,
        "decode_ms_per_token": decode_s * 1e3,
        "prefill_ms": prefill_s * 1e3,
        # The last prefill-and-decode run's steps: GPU time (forward_ms) against wall time
        # per step shows how much of a token's time the host adds.
        "step_stats": stats.summary() if stats is not None else None,
    }


def shutdown(llm: Any) -> None:
    """Let the engine release what it holds (threads, pools) if it has a way to."""
    for name in ("shutdown", "close"):
        fn = getattr(llm, name, None)
        if callable(fn):
            try:
                fn()
            except Exception as exc:  # releasing is best effort: the bench goes on
                progress(f"llm.{name}() failed: {exc!r}")
            return
