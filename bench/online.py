"""The online benchmark: Poisson arrivals at a sweep of rates, Orca and the HF peer.

For each rate, the first `n_per_rate` trace requests arrive at `poisson_arrivals` times (the
k-th rate seeded 100 + k, as the shared peers_hf.py draws them); the measures and the Orca
loop are `orca.online`'s (in-process, `LLM.add_request` / `LLM.step`); HF runs one
continuous-batching manager for the whole sweep, as the peers script does.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from bench.common import progress
from bench.trace import TraceRequest, poisson_arrivals
from orca.online import ARRIVAL_SEED_BASE, max_rate_within, online_row, sweep

__all__ = ["hf_online_sweep", "max_rate_within", "online_row", "orca_online_sweep"]


def orca_online_sweep(
    llm: Any,
    requests: list[TraceRequest],
    rates: list[float],
    n_per_rate: int,
    device: str,
    timeout_s: float = 300.0,
) -> list[dict[str, Any]]:
    """Orca in-process at each rate (`orca.online.sweep` over the first `n_per_rate`
    requests); `device` is unused (the loop syncs with each step's tokens)."""
    rows = sweep(llm, requests[:n_per_rate], rates, timeout_s)
    for row in rows:
        progress(
            f"orca_online: rate {row['rate']}: median {row['median_norm_ms']} ms/token, "
            f"achieved {row['achieved_req_s']:.2f} req/s"
        )
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
