"""Serving the workload online: Poisson arrivals into `LLM.add_request` / `LLM.step`, and
the paper's measures of it.

Per rate: the median and p99 *normalized latency* (end-to-end latency / output tokens,
ms/token), TTFT, time per output token after the first, and the achieved rate (requests /
time to the last finish). `max_rate_within` reads off the highest rate whose median
normalized latency stays within an SLO: the paper's "throughput at the same latency".
`orca tune` and bench/online.py use it.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from orca.sampling_params import SamplingParams
from orca.workload import TraceRequest, poisson_arrivals

# The seed of the k-th rate's arrivals (the shared peers_hf.py's online sweep uses 100 + k).
ARRIVAL_SEED_BASE = 100


def _pct(values: list[float], q: float) -> float | None:
    """The q-th percentile by nearest rank (peers_hf.py's index int(q/100 * n)), or None."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def online_row(
    rate: float,
    arrived: dict[str, float],
    first_token: dict[str, float],
    finished: dict[str, float],
    output_lens: dict[str, int],
    t0: float,
) -> dict[str, Any]:
    """One rate's summary from per-request times (perf_counter seconds): arrival, first
    token (may be missing), finish; `output_lens` the tokens each request generated."""
    done = [r for r in finished if r in arrived]
    norm = [(finished[r] - arrived[r]) / output_lens[r] * 1e3 for r in done]
    ttft = [(first_token[r] - arrived[r]) * 1e3 for r in done if r in first_token]
    tpot = [
        (finished[r] - first_token[r]) / (output_lens[r] - 1) * 1e3
        for r in done
        if r in first_token and output_lens[r] > 1
    ]
    last = max((finished[r] for r in done), default=None)
    return {
        "rate": rate,
        "n": len(arrived),
        "finished": len(done),
        "median_norm_ms": statistics.median(norm) if norm else None,
        "p99_norm_ms": _pct(norm, 99),
        "ttft_p50_ms": statistics.median(ttft) if ttft else None,
        "ttft_p99_ms": _pct(ttft, 99),
        "tpot_p50_ms": statistics.median(tpot) if tpot else None,
        "achieved_req_s": len(done) / (last - t0) if last is not None and last > t0 else 0.0,
    }


def max_rate_within(rows: list[dict[str, Any]], slo_ms: float) -> float | None:
    """The highest offered rate whose median normalized latency is within `slo_ms` and
    whose every request finished; None when no rate qualifies."""
    ok = [
        r["rate"]
        for r in rows
        if r.get("median_norm_ms") is not None
        and r["median_norm_ms"] <= slo_ms
        and r.get("finished") == r.get("n")
    ]
    return max(ok) if ok else None


def serve_poisson(
    llm: Any,
    requests: list[TraceRequest],
    rate: float,
    seed: int,
    timeout_s: float = 300.0,
) -> dict[str, Any]:
    """Serve `requests` arriving at `rate` per second (Poisson, `seed`) through `llm`, one
    `step` at a time with requests joining as they arrive (the engine sleeps only when it
    has nothing to run); returns `online_row`'s summary."""
    arrivals = poisson_arrivals(len(requests), rate, seed)
    arrived: dict[str, float] = {}
    first: dict[str, float] = {}
    finished: dict[str, float] = {}
    lens: dict[str, int] = {}
    t0 = time.perf_counter()
    nxt = 0
    while len(finished) < len(requests) and time.perf_counter() - t0 < arrivals[-1] + timeout_s:
        now = time.perf_counter()
        while nxt < len(requests) and t0 + arrivals[nxt] <= now:
            r = requests[nxt]
            params = SamplingParams(max_tokens=r.output_len, temperature=0.0, ignore_eos=True)
            rid = llm.add_request(r.prompt_token_ids, params)
            arrived[rid], lens[rid] = now, 0
            nxt += 1
        if not llm.has_unfinished():
            if nxt < len(requests):
                time.sleep(max(0.0, t0 + arrivals[nxt] - time.perf_counter()))
            continue
        updates = llm.step()
        stamp = time.perf_counter()  # the step's tokens are on the host now
        for u in updates:
            if u.new_token_ids and u.request_id not in first:
                first[u.request_id] = stamp
            lens[u.request_id] += len(u.new_token_ids)
            if u.finished:
                finished[u.request_id] = stamp
    return online_row(rate, arrived, first, finished, lens, t0)


def sweep(
    llm: Any, requests: list[TraceRequest], rates: list[float], timeout_s: float = 300.0
) -> list[dict[str, Any]]:
    """`serve_poisson` at each rate in turn (the k-th rate seeded ARRIVAL_SEED_BASE + k)."""
    return [
        serve_poisson(llm, requests, rate, ARRIVAL_SEED_BASE + k, timeout_s)
        for k, rate in enumerate(rates)
    ]
