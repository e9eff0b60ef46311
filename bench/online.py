"""The online benchmark: Poisson arrivals at a sweep of rates, Orca and the HF peer.

For each rate, the first `n_per_rate` trace requests arrive at `trace.poisson_arrivals`
times (the k-th rate seeded 100 + k, as the shared peers_hf.py draws them). Per rate: the
median and p99 *normalized latency* (end-to-end latency / output tokens, ms/token, the
paper's measure), TTFT, time per output token after the first, and the achieved rate
(requests / time to the last finish). `max_rate_within` then reads off the highest rate
whose median normalized latency stays within an SLO: the paper's "throughput at the same
latency".

Orca runs in-process through `LLM.add_request` / `LLM.step` (one iteration at a time,
requests joining as they arrive); HF through one continuous-batching manager, as the peers
script does.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

from bench.common import progress, sync
from bench.trace import TraceRequest, poisson_arrivals

# The seed of the k-th rate's arrivals (peers_hf.py's online sweep uses 100 + k).
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


def orca_online_sweep(
    llm: Any,
    requests: list[TraceRequest],
    rates: list[float],
    n_per_rate: int,
    device: str,
    timeout_s: float = 300.0,
) -> list[dict[str, Any]]:
    """Orca in-process at each rate: requests join at their arrival time, one `step` at a
    time; the engine idles (sleeps) only when it has nothing to run."""
    from orca import SamplingParams

    batch = requests[:n_per_rate]
    rows = []
    for k, rate in enumerate(rates):
        arrivals = poisson_arrivals(len(batch), rate, ARRIVAL_SEED_BASE + k)
        arrived: dict[str, float] = {}
        first: dict[str, float] = {}
        finished: dict[str, float] = {}
        lens: dict[str, int] = {}
        sync(device)
        t0 = time.perf_counter()
        nxt = 0
        while len(finished) < len(batch) and time.perf_counter() - t0 < arrivals[-1] + timeout_s:
            now = time.perf_counter()
            while nxt < len(batch) and t0 + arrivals[nxt] <= now:
                r = batch[nxt]
                params = SamplingParams(max_tokens=r.output_len, temperature=0.0, ignore_eos=True)
                rid = llm.add_request(r.prompt_token_ids, params)
                arrived[rid], lens[rid] = now, 0
                nxt += 1
            if not llm.has_unfinished():
                if nxt < len(batch):
                    time.sleep(max(0.0, t0 + arrivals[nxt] - time.perf_counter()))
                continue
            updates = llm.step()
            stamp = time.perf_counter()  # tokens reach the host with the step's one sync
            for u in updates:
                if u.new_token_ids and u.request_id not in first:
                    first[u.request_id] = stamp
                lens[u.request_id] += len(u.new_token_ids)
                if u.finished:
                    finished[u.request_id] = stamp
        row = online_row(rate, arrived, first, finished, lens, t0)
        progress(
            f"orca_online: rate {rate}: median {row['median_norm_ms']} ms/token, "
            f"achieved {row['achieved_req_s']:.2f} req/s"
        )
        rows.append(row)
    return rows


def hf_online_sweep(
    model: Any,
    requests: list[TraceRequest],
    device: str,
    rates: list[float],
    n_per_rate: int,
    timeout_s: float = 300.0,
) -> list[dict[str, Any]]:
    """HF continuous batching at each rate (one manager for the whole sweep, compile level
    0): a thread adds requests at their arrival times, the caller collects finished ones.
    HF reports a request only once finished: no TTFT or time per output token."""
    import torch
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    gc = GenerationConfig(do_sample=False, eos_token_id=-1, pad_token_id=0, max_new_tokens=128)
    kw = {} if device.startswith("cuda") else {"num_blocks": 64, "max_batch_tokens": 256}
    batch = requests[:n_per_rate]
    rows = []
    with torch.no_grad():
        mgr = model.init_continuous_batching(
            generation_config=gc, continuous_batching_config=ContinuousBatchingConfig(**kw)
        )
        try:
            mgr.warmup()
        except Exception as exc:  # warm-up is optional across transformers versions
            progress(f"hf_online: warm-up failed: {exc!r}"[:300])
        mgr.start()
        try:
            for k, rate in enumerate(rates):
                arrivals = poisson_arrivals(len(batch), rate, ARRIVAL_SEED_BASE + k)
                arrived: dict[str, float] = {}
                lens: dict[str, int] = {}
                t0 = time.perf_counter()

                def submit(arrivals=arrivals, arrived=arrived, lens=lens, t0=t0) -> None:
                    for r, at in zip(batch, arrivals, strict=True):
                        delay = t0 + at - time.perf_counter()
                        if delay > 0:
                            time.sleep(delay)
                        rid = mgr.add_request(
                            r.prompt_token_ids, max_new_tokens=r.output_len, eos_token_id=-1
                        )
                        arrived[rid], lens[rid] = time.perf_counter(), r.output_len

                thread = threading.Thread(target=submit, daemon=True)
                thread.start()
                finished: dict[str, float] = {}
                while (
                    len(finished) < len(batch)
                    and time.perf_counter() - t0 < arrivals[-1] + timeout_s
                ):
                    result = mgr.get_result(timeout=0.5)
                    if result is not None and result.is_finished():
                        finished[result.request_id] = time.perf_counter()
                thread.join()
                row = online_row(rate, arrived, {}, finished, lens, t0)
                progress(
                    f"hf_online: rate {rate}: median {row['median_norm_ms']} ms/token, "
                    f"achieved {row['achieved_req_s']:.2f} req/s"
                )
                rows.append(row)
        finally:
            mgr.stop(block=True, timeout=10)
    return rows
