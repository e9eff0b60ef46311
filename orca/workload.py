"""The Orca paper's synthesized workload: random prompts and output lengths, and Poisson
arrival times. `orca tune` and the benchmarks (bench/) serve it.

`trace()` makes the same requests as `trace()` in the shared bench's `peers_hf.py` (same
seed, same RNG calls in the same order), so Orca and the HF peers serve identical prompts
and output lengths; tests/test_bench_trace.py checks the two against each other.
"""

from __future__ import annotations

import random
from typing import NamedTuple


class TraceRequest(NamedTuple):
    """One request: its prompt and how many tokens it must generate (EOS is ignored)."""

    prompt_token_ids: list[int]
    output_len: int


def trace(
    n: int,
    vocab_size: int,
    seed: int = 0,
    in_lo: int = 32,
    in_hi: int = 512,
    out_lo: int = 1,
    out_hi: int = 128,
) -> list[TraceRequest]:
    """`n` requests: prompt length uniform in [in_lo, in_hi], output length uniform in
    [out_lo, out_hi], prompt ids uniform in [10, vocab_size) (ids below 10 are left to
    special tokens). Equal, as tuples, to peers_hf.trace(n, vocab_size, seed, ...)."""
    rng = random.Random(seed)
    requests = []
    for _ in range(n):
        # Draw order matters: both lengths first, then the ids (as peers_hf.py does).
        prompt_len, output_len = rng.randint(in_lo, in_hi), rng.randint(out_lo, out_hi)
        prompt = [rng.randrange(10, vocab_size) for _ in range(prompt_len)]
        requests.append(TraceRequest(prompt, output_len))
    return requests


def poisson_arrivals(n: int, rate_per_s: float, seed: int) -> list[float]:
    """Arrival times (seconds from the start) of `n` requests at `rate_per_s` on average,
    drawn as peers_hf.py's online sweep draws them (its k-th rate uses seed 100 + k)."""
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    for _ in range(n):
        t += rng.expovariate(rate_per_s)
        arrivals.append(t)
    return arrivals


def trace_stats(requests: list[TraceRequest]) -> dict[str, int]:
    """Token counts of a trace: requests, prompt tokens, output tokens."""
    return {
        "n": len(requests),
        "in_tokens": sum(len(r.prompt_token_ids) for r in requests),
        "out_tokens": sum(r.output_len for r in requests),
    }
