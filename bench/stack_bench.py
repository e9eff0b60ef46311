"""The full stack against Orca in-process, side by side in one invocation on one device.

    python bench/stack_bench.py --shape llama8b --n 256 --out bench/results/stack-llama8b.jsonl

First Orca in-process (`orca.LLM(load_format="random")` on the offline trace, as
bench/run.py's `orca` phase), released; then the same shape served by the whole stack
(`orca.launcher.LocalStack`, what `orca serve` runs: embedded Redis, worker, scheduler and
gateway as separate processes), and every trace request sent at t=0 as an OpenAI
`/v1/completions` call (prompt = the token ids, `max_tokens` = the output length, greedy,
`ignore_eos`) from an asyncio httpx client. Reports req/s, output tok/s, the ratio
stack / in-process, and the scheduler's per-iteration control-plane overhead read from its
Prometheus metrics before and after the run. This script is `bench/run.py --stack` with
other defaults (`--skip ceil,b1,hf`): every flag of run.py works here. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import progress
from bench.shapes import hf_config, vocab_size
from bench.trace import TraceRequest, trace

# The scheduler's per-iteration histograms this benchmark reports (Prometheus base names).
CONTROL_PLANE_METRIC = "orca_control_plane_overhead_seconds"
PLAN_BUILD_METRIC = "orca_plan_build_seconds"
ITERATION_METRIC = "orca_iteration_seconds"
BATCH_SIZE_METRIC = "orca_batch_size"
ITERATIONS_COUNTER = "orca_iterations_total"
# Per-worker step time (labels pipeline, stage, tp_rank): kept per label set as well.
WORKER_BUSY_METRIC = "orca_worker_busy_seconds_total"
WORKER_WAITED_METRIC = "orca_worker_waited_seconds_total"
# Samples that say nothing summable about a run (per-bucket counts, creation timestamps).
_SKIPPED_SUFFIXES = ("_bucket", "_created")
# The warm-up requests: orca_bench.warm_up's (another seed than the trace: no cache hits).
WARMUP_N, WARMUP_SEED, WARMUP_OUT_HI = 16, 12345, 16


# --- pure helpers (tests/test_stack_bench.py) -------------------------------------------


def fresh_prefix(requests: list[TraceRequest], vocab: int, k: int) -> list[TraceRequest]:
    """The same requests with each prompt's first id moved by `k` (kept in [10, vocab)):
    the same token counts, but no block of any prompt hashes as before (prefix-cache hashes
    chain from the first block), so a second pass over the trace gets no cache hits."""
    span = vocab - 10
    return [
        TraceRequest(
            [10 + (r.prompt_token_ids[0] - 10 + k) % span, *r.prompt_token_ids[1:]], r.output_len
        )
        for r in requests
    ]


def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text exposition as {sample name: value}, summed over label sets.

    Buckets, `_created` stamps and summary quantiles are dropped; unparsable lines are
    skipped (a scrape must never fail the benchmark). The per-worker busy counter is also
    kept per label set, as `name{labels}`.
    """
    samples: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            name, _, rest = line.partition("{")
            labels, _, value_part = rest.rpartition("}")
            if 'quantile="' in labels:
                continue
        else:
            name, _, value_part = line.partition(" ")
        name = name.strip()
        if not name or name.endswith(_SKIPPED_SUFFIXES):
            continue
        fields = value_part.split()
        if not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        samples[name] = samples.get(name, 0.0) + value
        if name in (WORKER_BUSY_METRIC, WORKER_WAITED_METRIC) and "{" in line:
            samples[f"{name}{{{labels}}}"] = value
    return samples


def metric_deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What changed between two scrapes: `after - before` of every `_sum`, `_count` and
    `_total` sample that moved (gauges are not deltas and are left out)."""
    out = {}
    for name, value in after.items():
        if name.partition("{")[0].endswith(("_sum", "_count", "_total")):
            delta = value - before.get(name, 0.0)
            if delta:
                out[name] = delta
    return out


def control_plane_summary(deltas: dict[str, float], seconds: float | None) -> dict[str, Any]:
    """Per-iteration means of the scheduler's histograms from scrape deltas: control-plane
    overhead, plan build and whole iteration (ms), batch size; the iterations counted; and
    the overhead's and plan build's shares of the pass's wall time. Missing metrics give
    missing keys."""
    out: dict[str, Any] = {}
    for key, base, scale in (
        ("control_plane", CONTROL_PLANE_METRIC, 1e3),
        ("plan_build", PLAN_BUILD_METRIC, 1e3),
        ("iteration", ITERATION_METRIC, 1e3),
        ("batch_size", BATCH_SIZE_METRIC, 1.0),
    ):
        total, count = deltas.get(f"{base}_sum"), deltas.get(f"{base}_count")
        if not count:
            continue
        out[f"{key}_mean_ms" if scale != 1.0 else f"{key}_mean"] = (total or 0.0) / count * scale
        if seconds and scale != 1.0 and key != "iteration":
            out[f"{key}_share"] = (total or 0.0) / seconds
    counters = [ITERATIONS_COUNTER] + sorted(
        name
        for name in deltas
        if name.endswith("_total") and ("iteration" in name or "step" in name)
    )
    counted = next((name for name in counters if deltas.get(name)), None)
    if counted is not None:
        out["iterations"] = int(deltas[counted])
        if counted != ITERATIONS_COUNTER:
            out["iterations_metric"] = counted
    elif deltas.get(f"{CONTROL_PLANE_METRIC}_count"):
        out["iterations"] = int(deltas[f"{CONTROL_PLANE_METRIC}_count"])
    return out


def worker_busy_summary(deltas: dict[str, float], seconds: float | None) -> dict[str, Any]:
    """Each worker's busy share of the pass's wall time (its reported step time over
    `seconds`), keyed `p<pipeline>s<stage>r<rank>`, and the lowest and mean share: how full
    the pipelines' stages were kept; then the mean share each worker sat waiting for a plan
    between steps (`worker_waited_share_mean`). The rest of the wall time is before the first
    and after the last step. Empty without the metric or a duration."""
    if not seconds:
        return {}
    shares = _per_worker_shares(deltas, WORKER_BUSY_METRIC, seconds)
    if not shares:
        return {}
    summary = {
        "worker_busy_share": dict(sorted(shares.items())),
        "worker_busy_share_min": min(shares.values()),
        "worker_busy_share_mean": sum(shares.values()) / len(shares),
    }
    waited = _per_worker_shares(deltas, WORKER_WAITED_METRIC, seconds)
    if waited:
        summary["worker_waited_share_mean"] = sum(waited.values()) / len(waited)
    return summary


def _per_worker_shares(deltas: dict[str, float], metric: str, seconds: float) -> dict[str, float]:
    """`metric`'s per-worker values over `seconds`, keyed `p<pipeline>s<stage>r<rank>`."""
    shares = {}
    prefix = metric + "{"
    for name, value in deltas.items():
        if name.startswith(prefix):
            labels = dict(
                part.split("=", 1) for part in name[len(prefix) : -1].split(",") if "=" in part
            )
            key = "p{}s{}r{}".format(
                *(labels.get(k, "?").strip('"') for k in ("pipeline", "stage", "tp_rank"))
            )
            shares[key] = value / seconds
    return shares


def process_cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) each named process has used so far (Linux /proc; a
    process that is gone or unreadable is left out)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return out


def redis_command_stats(url: str) -> dict[str, tuple[int, int]]:
    """(calls, microseconds) per Redis command so far (INFO commandstats)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        info = client.info("commandstats")
    finally:
        client.close()
    return {k.removeprefix("cmdstat_"): (v["calls"], v["usec"]) for k, v in info.items()}


def load_summary(
    cpu_before: dict[str, float],
    cpu_after: dict[str, float],
    redis_before: dict[str, tuple[int, int]],
    redis_after: dict[str, tuple[int, int]],
    seconds: float,
) -> dict[str, Any]:
    """Where the stack's host time went in a pass: each process's CPU share of the wall
    time, and Redis's busy share with its calls and busy ms per command."""
    out: dict[str, Any] = {}
    if seconds <= 0:
        return out
    out["cpu_share"] = {
        name: round((cpu_after[name] - cpu_before[name]) / seconds, 3)
        for name in sorted(cpu_after)
        if name in cpu_before
    }
    commands = {}
    for name, (calls, usec) in redis_after.items():
        calls0, usec0 = redis_before.get(name, (0, 0))
        if calls > calls0:
            commands[name] = {"calls": calls - calls0, "ms": round((usec - usec0) / 1000, 1)}
    if commands:
        out["redis_commands"] = dict(sorted(commands.items()))
        out["redis_busy_share"] = round(sum(c["ms"] for c in commands.values()) / 1e3 / seconds, 3)
    return out


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def completion_body(model: str, request: TraceRequest, stream: bool) -> dict[str, Any]:
    """The OpenAI /v1/completions body of one trace request (greedy, EOS ignored)."""
    body: dict[str, Any] = {
        "model": model,
        "prompt": list(request.prompt_token_ids),
        "max_tokens": request.output_len,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def summarize_responses(
    requests: list[TraceRequest], results: list[dict[str, Any]], seconds: float
) -> dict[str, Any]:
    """Throughput and correctness of one pass: `results[i]` is what request i got
    (`completion_tokens`, `prompt_tokens`, `latency_s`, optional `ttft_s`, or `error`)."""
    ok = [(q, r) for q, r in zip(requests, results, strict=True) if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    wrong = sum(1 for q, r in ok if r.get("completion_tokens") != q.output_len)
    wrong_prompt = sum(
        1
        for q, r in ok
        if r.get("prompt_tokens") is not None and r["prompt_tokens"] != len(q.prompt_token_ids)
    )
    useful = sum(min(r.get("completion_tokens") or 0, q.output_len) for q, r in ok)
    prompt_tokens = sum(len(q.prompt_token_ids) for q, _ in ok)
    latencies = [r["latency_s"] for _, r in ok]
    norm_ms = [r["latency_s"] / q.output_len * 1e3 for q, r in ok]
    ttfts = [r["ttft_s"] for _, r in ok if r.get("ttft_s") is not None]
    out: dict[str, Any] = {
        "seconds": seconds,
        "req_s": len(ok) / seconds,
        "out_tok_s": useful / seconds,
        "total_tok_s": (useful + prompt_tokens) / seconds,
        "wrong_lengths": wrong + len(errors),
        "wrong_prompt_tokens": wrong_prompt,
        "failed": len(errors),
        "retries": sum(r.get("retries", 0) for r in results),
        "latency_p50_s": percentile(latencies, 50),
        "latency_max_s": max(latencies) if latencies else None,
        "norm_latency_p50_ms": percentile(norm_ms, 50),
        "norm_latency_p99_ms": percentile(norm_ms, 99),
    }
    if ttfts:
        out["ttft_p50_s"] = percentile(ttfts, 50)
        out["ttft_p99_s"] = percentile(ttfts, 99)
    if errors:
        out["first_errors"] = sorted(set(errors))[:3]
    return out


def with_ratios(result: dict[str, Any], in_process: dict[str, Any]) -> dict[str, Any]:
    """Add stack / in-process ratios of req/s and output tok/s (when both were measured)."""
    for key in ("req_s", "out_tok_s"):
        if result.get(key) and in_process.get(key):
            result[f"ratio_{key}"] = result[key] / in_process[key]
    return result


# --- the model folder ---------------------------------------------------------------------


def write_tokenizer(shape: str, model_dir: str | Path) -> None:
    """A word-level tokenizer over the shape's whole vocabulary (token i is `<i>`; BOS and
    EOS named as Llama-3 / GPT-2 name them) in `model_dir`: the gateway detokenizes what it
    returns and the shapes have no checkpoint, hence no tokenizer. Decoding costs about
    what a real tokenizer's does; the prompts travel as token ids, so it never encodes."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    cfg = hf_config(shape)
    bos, eos = cfg.get("bos_token_id"), cfg.get("eos_token_id")
    special = {bos: "<|begin_of_text|>", eos: "<|end_of_text|>"}
    if bos == eos:
        special = {eos: "<|endoftext|>"}
    vocab = {special.get(i, f"<{i}>"): i for i in range(int(cfg["vocab_size"]))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=special[eos]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    path = Path(model_dir)
    tok.save(str(path / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": special.get(bos),
        "eos_token": special[eos],
        "model_max_length": int(cfg.get("max_position_embeddings") or cfg.get("n_positions")),
        "clean_up_tokenization_spaces": False,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")


# --- HTTP client ----------------------------------------------------------------------------


async def _one_completion(client, url: str, body: dict[str, Any], sem, max_retries: int):
    """POST one completion (waiting on `sem`); its token counts and latency, or `error`.
    429/503 (admission said no) are retried with backoff and counted."""
    async with sem:
        t0 = time.perf_counter()
        retries = 0
        while True:
            try:
                if body["stream"]:
                    got = await _stream_completion(client, url, body, t0)
                else:
                    response = await client.post(url, json=body)
                    if response.status_code in (429, 503) and retries < max_retries:
                        retries += 1
                        await asyncio.sleep(min(0.05 * 2**retries, 2.0))
                        continue
                    if response.status_code != 200:
                        return {"error": f"HTTP {response.status_code}: {response.text[:200]}"}
                    usage = response.json().get("usage") or {}
                    got = {
                        "completion_tokens": usage.get("completion_tokens"),
                        "prompt_tokens": usage.get("prompt_tokens"),
                    }
            except _Retry:
                if retries >= max_retries:
                    return {"error": "HTTP 429/503 after retries"}
                retries += 1
                await asyncio.sleep(min(0.05 * 2**retries, 2.0))
                continue
            except Exception as exc:  # one failed request is counted, the pass goes on
                return {"error": f"{type(exc).__name__}: {exc}"[:200]}
            got["latency_s"] = time.perf_counter() - t0
            got["retries"] = retries
            return got


class _Retry(Exception):
    """A streaming request was refused with 429/503 before any token."""


async def _stream_completion(client, url: str, body: dict[str, Any], t0: float):
    """One streaming completion: counts from the final usage chunk (or the chunks seen)."""
    ttft, chunks, usage = None, 0, None
    async with client.stream("POST", url, json=body) as response:
        if response.status_code in (429, 503):
            raise _Retry
        if response.status_code != 200:
            text = (await response.aread()).decode(errors="replace")
            raise RuntimeError(f"HTTP {response.status_code}: {text[:200]}")
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            event = json.loads(data)
            if event.get("error"):
                raise RuntimeError(f"stream error: {str(event['error'])[:200]}")
            if event.get("choices"):
                chunks += 1
                if ttft is None:
                    ttft = time.perf_counter() - t0
            if event.get("usage"):
                usage = event["usage"]
    usage = usage or {}
    return {
        "completion_tokens": usage.get("completion_tokens"),
        "prompt_tokens": usage.get("prompt_tokens"),
        "chunks": chunks,
        "ttft_s": ttft,
    }


async def _send_all(
    base_url: str,
    model: str,
    requests: list[TraceRequest],
    stream: bool,
    concurrency: int,
    timeout_s: float,
    max_retries: int = 20,
) -> tuple[list[dict[str, Any]], float]:
    """Every request at t=0 (at most `concurrency` in flight); (per-request results, seconds)."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    sem = asyncio.Semaphore(concurrency)
    url = base_url.rstrip("/") + "/completions"
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(timeout_s)) as client:
        bodies = [completion_body(model, r, stream) for r in requests]  # built before t=0
        t0 = time.perf_counter()
        results = await asyncio.gather(
            *(_one_completion(client, url, b, sem, max_retries) for b in bodies)
        )
        seconds = time.perf_counter() - t0
    return list(results), seconds


def send_all(base_url: str, model: str, requests, stream: bool, concurrency: int, timeout_s: float):
    """`_send_all` from synchronous code."""
    return asyncio.run(_send_all(base_url, model, requests, stream, concurrency, timeout_s))


def http_get(url: str, timeout_s: float = 5.0) -> str:
    """GET `url`'s body (httpx, synchronous); raises on a non-200 status."""
    import httpx

    response = httpx.get(url, timeout=timeout_s)
    response.raise_for_status()
    return response.text


def scrape(url: str) -> tuple[dict[str, float], str | None]:
    """One Prometheus scrape: (samples, None), or ({}, why) when it cannot be read."""
    try:
        return parse_prometheus(http_get(url)), None
    except Exception as exc:
        return {}, f"{type(exc).__name__}: {exc}"[:200]


def served_model_name(base_url: str, fallback: str) -> str:
    """The model id the gateway serves (its /v1/models), else `fallback`."""
    try:
        data = json.loads(http_get(base_url.rstrip("/") + "/models")).get("data") or []
        return data[0]["id"] if data else fallback
    except Exception:
        return fallback


# --- the stack phases -------------------------------------------------------------------


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM (a `timeout` running out) raises KeyboardInterrupt, so `finally` blocks
    stop the stack's processes: they run in sessions of their own and would outlive us."""

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _redis_stats(stack) -> dict[str, tuple[int, int]]:
    """The stack's Redis command stats; empty if Redis cannot be asked (best effort)."""
    try:
        return redis_command_stats(stack.redis_url)
    except Exception as exc:
        progress(f"redis stats unavailable: {exc!r}")
        return {}


def _stack_pids(stack) -> list[int]:
    """Process ids of the stack's children and its Redis (best effort: for the pid file)."""
    return stack.pids()


class PidWatch:
    """While the stack starts (minutes for a big model), note the process ids of what it
    has started every 0.2 s into `pids` and `path`: a wrapper that had to SIGKILL us can
    then kill them too (they run in sessions of their own and would hold the GPU)."""

    def __init__(self, stack, pids: list[int], path: str | None) -> None:
        self.stack, self.pids, self.path = stack, pids, path
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pid-watch", daemon=True)

    def note(self) -> None:
        """Add the stack's current process ids; rewrite the file if any is new."""
        new = [pid for pid in _stack_pids(self.stack) if pid not in self.pids]
        if new:
            self.pids.extend(new)
            if self.path:
                Path(self.path).write_text(" ".join(map(str, self.pids)) + "\n")

    def _run(self) -> None:
        while not self._done.wait(0.2):
            self.note()

    def __enter__(self) -> PidWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.note()


def _kill_leftovers(pids: list[int]) -> list[int]:
    """SIGKILL any of `pids` still alive after the stack's own stop; the ones killed."""
    killed = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except OSError:
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except OSError:
            pass
    return killed


def run_stack(
    args: argparse.Namespace,
    runner,
    model_dir: str,
    requests: list[TraceRequest],
    device: str,
    num_kv_blocks: int | None,
) -> None:
    """The full-stack phases (stack_init, stack, stack_stream): start LocalStack on
    `model_dir` (a pool of `num_kv_blocks`, None: the worker sizes it), warm it up, send the trace through HTTP (then again streaming, with fresh
    prefixes), scrape the scheduler's metrics around each pass; every process is stopped
    before returning, whatever happened."""
    if {"stack", "stack_stream"} <= runner.skip:
        return
    from orca.embedded_redis import free_port
    from orca.launcher import LocalStack, ServeConfig

    rec = runner.rec
    holder: dict[str, Any] = {}
    concurrency = args.concurrency or len(requests)
    log_dir = tempfile.mkdtemp(prefix=f"orca-stack-bench-{args.shape}-")

    def init() -> dict[str, Any]:
        config = ServeConfig(
            model=model_dir,
            port=free_port(),
            grpc_port=free_port(),
            device=device,
            dtype=args.dtype,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            kv_policy=args.kv_policy or "paged",
            kernels=args.kernels,
            cuda_graph_max_batch=args.cuda_graph_max_batch,
            overlap=args.overlap,
            block_size=args.block_size,
            num_kv_blocks=num_kv_blocks,
            load_format="random",
            tp=args.tp,
            pp=args.pp,
            pipelines=args.pipelines,
            ready_timeout_s=args.stack_ready_timeout,
            log_dir=log_dir,
        )
        t = time.perf_counter()
        stack = LocalStack(config)
        holder["stack"] = stack
        holder["pids"] = []
        with PidWatch(stack, holder["pids"], args.stack_pid_file):
            stack.start()
        ready_s = time.perf_counter() - t
        base = stack.base_url
        holder["model"] = served_model_name(base, Path(model_dir).name)
        holder["metrics_urls"] = {
            "scheduler": f"http://127.0.0.1:{stack.scheduler_metrics_port}/metrics",
            "gateway": base.removesuffix("/v1") + "/metrics",
        }
        warm = trace(WARMUP_N, vocab_size(args.shape), seed=WARMUP_SEED, out_hi=WARMUP_OUT_HI)
        results, warmup_s = send_all(base, holder["model"], warm, False, concurrency, 300)
        bad = summarize_responses(warm, results, warmup_s)
        if bad["wrong_lengths"]:
            raise RuntimeError(f"warm-up through HTTP failed: {bad.get('first_errors') or bad}")
        return {
            "ready_s": ready_s,
            "warmup_s": warmup_s,
            "base_url": base,
            "model": holder["model"],
            "concurrency": concurrency,
            "num_kv_blocks": config.num_kv_blocks,
            "log_dir": log_dir,
            "metrics_urls": holder["metrics_urls"],
        }

    def one_pass(stream: bool, reqs) -> dict[str, Any]:
        stack = holder["stack"]
        before = {k: scrape(u) for k, u in holder["metrics_urls"].items()}
        cpu_before, redis_before = process_cpu_seconds(stack.named_pids()), _redis_stats(stack)
        results, seconds = send_all(stack.base_url, holder["model"], reqs, stream, concurrency, 600)
        cpu_after, redis_after = process_cpu_seconds(stack.named_pids()), _redis_stats(stack)
        after = {k: scrape(u) for k, u in holder["metrics_urls"].items()}
        out = with_ratios(summarize_responses(reqs, results, seconds), rec.results.get("orca", {}))
        out.update(stream=stream, concurrency=concurrency)
        for source, (samples, err) in after.items():
            deltas = metric_deltas(before[source][0], samples)
            if err or before[source][1]:
                out[f"{source}_metrics_error"] = err or before[source][1]
            out[f"{source}_metrics"] = deltas
        out.update(control_plane_summary(out.get("scheduler_metrics", {}), seconds))
        out.update(worker_busy_summary(out.get("scheduler_metrics", {}), seconds))
        out.update(load_summary(cpu_before, cpu_after, redis_before, redis_after, seconds))
        if "iterations" not in out:  # maybe the gateway re-exports the scheduler's
            out.update(control_plane_summary(out.get("gateway_metrics", {}), seconds))
        try:  # a service that died during the pass: keep the numbers, say so
            holder["stack"].check_children()
        except Exception as exc:
            out["stack_error"] = f"{type(exc).__name__}: {exc}"[:1000]
        return out

    with sigterm_as_interrupt():
        try:
            if runner.phase("stack_init", init) is None:
                return
            runner.phase("stack", lambda: one_pass(False, requests))
            fresh = fresh_prefix(requests, vocab_size(args.shape), 1)
            runner.phase("stack_stream", lambda: one_pass(True, fresh))
            if args.stack_repeat:
                again = fresh_prefix(requests, vocab_size(args.shape), 2)
                runner.phase("stack_repeat", lambda: one_pass(False, again))
        finally:
            stack = holder.get("stack")
            if stack is not None:
                progress("stack: stopping")
                stack.stop()
                killed = _kill_leftovers(holder.get("pids", []))
                if killed:
                    progress(f"stack: killed leftover processes {killed}")
            holder.clear()


# --- the summary ----------------------------------------------------------------------------


def stack_table(results: dict[str, dict[str, Any]], shape: str, n: int) -> str:
    """Markdown: Orca in-process vs the full stack over HTTP (and streaming), with ratios,
    then the scheduler's control-plane overhead per iteration."""
    from bench.run import _fmt, _ratio  # run.py imports this module: import at call time

    orca, stack, stream = (results.get(k, {}) for k in ("orca", "stack", "stack_stream"))
    env, init = results.get("env", {}), results.get("stack_init", {})
    lines = [
        f"### full stack vs in-process: {shape}, n={n}, {env.get('gpu') or env.get('device')}, "
        f"concurrency {init.get('concurrency', '-')}",
        "",
        "| offline trace | Orca in-process | stack (HTTP) | stack / in-process "
        "| stack, streaming | streaming / in-process |",
        "|---|---|---|---|---|---|",
    ]
    for label, key in (("req/s", "req_s"), ("output tok/s", "out_tok_s")):
        o, s, t = orca.get(key), stack.get(key), stream.get(key)
        lines.append(
            f"| {label} | {_fmt(o)} | {_fmt(s)} | {_ratio(s, o)} | {_fmt(t)} | {_ratio(t, o)} |"
        )
    for label, key in (
        ("seconds", "seconds"),
        ("wrong lengths", "wrong_lengths"),
        ("median latency, s", "latency_p50_s"),
        ("median TTFT, s", "ttft_p50_s"),
    ):
        lines.append(
            f"| {label} | {_fmt(orca.get(key))} | {_fmt(stack.get(key))} | "
            f"| {_fmt(stream.get(key))} | |"
        )
    lines += [
        "",
        "| scheduler, per iteration | stack | stack, streaming |",
        "|---|---|---|",
    ]
    for label, key in (
        ("iterations", "iterations"),
        ("control-plane overhead, ms (mean)", "control_plane_mean_ms"),
        ("plan build, ms (mean)", "plan_build_mean_ms"),
        ("whole iteration, ms (mean)", "iteration_mean_ms"),
        ("batch size (mean)", "batch_size_mean"),
        ("control-plane share of wall time", "control_plane_share"),
        ("plan-build share of wall time", "plan_build_share"),
        ("worker busy share, lowest", "worker_busy_share_min"),
        ("worker busy share, mean", "worker_busy_share_mean"),
        ("worker waiting between steps, share", "worker_waited_share_mean"),
    ):
        lines.append(f"| {label} | {_fmt(stack.get(key), 3)} | {_fmt(stream.get(key), 3)} |")
    lines.append(
        f"\nStack ready in {_fmt(init.get('ready_s'), 1)} s; target stack / in-process "
        "≥ 0.90 (goal 0.95)."
    )
    errors = [
        f"{k}: {v.get('error') or v.get('reason')}"
        for k, v in results.items()
        if k.startswith(("stack", "orca")) and k.endswith(("_error", "_skipped"))
    ]
    if errors:
        lines += ["", "Not measured: " + "; ".join(errors)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """bench/run.py with the stack on and `--skip ceil,b1,hf` by default."""
    from bench import run

    return run.main(argv, stack_mode=True)


if __name__ == "__main__":
    sys.exit(main())
