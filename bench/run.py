"""Orca against the HF transformers peers, side by side in one invocation on one device.

    python bench/run.py --shape llama8b --n 256 --out bench/results/llama8b.jsonl

Phases, in order (each can be skipped, each failure is recorded and the run goes on):
  ceil       device copy bandwidth and matmul rate (MBU is relative to the measured copy)
  orca       the trace offline (all requests at t=0 through LLM.generate, after a warm-up)
  orca_b1    Orca batch-1 decode (prompt 128, 128 new tokens)
  hf_cb      HF continuous batching (init_continuous_batching), same shape, random weights
  hf_b1      HF batch-1 decode
  hf_static  HF static batching (request-level, bs 32: the paper's baseline)
With --rates (bench/online.py), Poisson arrivals at each rate, --n-per-rate requests each:
  orca_online  Orca in-process (LLM.add_request / LLM.step), after orca_b1
  hf_online    HF continuous batching, after hf_cb
With --stack, between the Orca and the HF phases (bench/stack_bench.py):
  stack         the trace through the full stack (orca serve's processes), OpenAI HTTP
  stack_stream  the same requests streaming (first ids moved: no prefix-cache hits)
`--skip` takes these names, or `b1` (both batch-1 runs), `hf` (every HF phase) and
`stack` (both stack passes).
One JSON line per measurement goes to stdout and is appended to --out; a markdown table
with the Orca/HF ratios ends the run (with --stack, also one of stack / in-process).
See bench/README.md.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import online, orca_bench, peers_hf, stack_bench
from bench.common import (
    Recorder,
    env_info,
    error_text,
    free_device_memory,
    measure_ceilings,
    progress,
)
from bench.shapes import SHAPES, max_model_len, param_count, vocab_size, weight_bytes, write_config
from bench.trace import trace, trace_stats

PHASES = (
    "ceil", "orca", "orca_b1", "orca_online", "stack", "stack_stream",
    "hf_cb", "hf_online", "hf_b1", "hf_static",
)  # fmt: skip
STACK_PHASES = ("stack", "stack_stream")
SKIP_GROUPS = {
    "b1": ("orca_b1", "hf_b1"),
    "hf": ("hf_b1", "hf_static", "hf_cb", "hf_online"),
    "online": ("orca_online", "hf_online"),
    "stack": STACK_PHASES,
}
# bench/stack_bench.py: run.py with the stack on and these phases skipped by default.
STACK_MODE_SKIP = "ceil,b1,hf"


def build_parser(stack_mode: bool = False) -> argparse.ArgumentParser:
    """run.py's command line; `stack_mode`: bench/stack_bench.py's defaults."""
    ap = argparse.ArgumentParser(
        prog="stack_bench.py" if stack_mode else "run.py",
        description=(
            "Orca in-process vs the full stack (orca serve, OpenAI HTTP) on the Orca-paper "
            "trace, one device, one run: bench/run.py --stack --skip ceil,b1,hf."
            if stack_mode
            else "Orca vs HF transformers on the Orca-paper trace, one device, one run."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--shape", default="llama1b", choices=sorted(SHAPES))
    ap.add_argument("--n", type=int, default=256, help="requests in the trace")
    ap.add_argument("--seed", type=int, default=0, help="trace seed (0: the shared trace)")
    ap.add_argument(
        "--skip",
        default=STACK_MODE_SKIP if stack_mode else "",
        help=f"comma-separated phases to skip: {', '.join(PHASES)}, or b1, hf, stack",
    )
    ap.add_argument("--out", default=None, help="append the JSON lines to this .jsonl file")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    ap.add_argument(
        "--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu (both engines)"
    )
    ap.add_argument(
        "--cpu-threads",
        type=int,
        default=1,
        help="torch threads on cpu (smoke runs: tiny ops gain nothing from more, and suffer "
        "most when other jobs share the cores)",
    )
    eng = ap.add_argument_group("Orca engine")
    eng.add_argument("--max-num-seqs", type=int, default=256)
    eng.add_argument("--max-num-batched-tokens", type=int, default=8192)
    eng.add_argument("--block-size", type=int, default=16)
    eng.add_argument(
        "--num-kv-blocks",
        type=int,
        default=None,
        help="default: the engine sizes the pool on cuda; enough for the trace on cpu "
        "(the stack's worker gets the same)",
    )
    eng.add_argument("--kv-policy", default=None, choices=["paged", "reserve"])
    eng.add_argument(
        "--overlap",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="overlapped scheduling: LLM(overlap=...) in-process, orca serve --[no-]overlap "
        "for the stack (default: each one's own: off in-process, on in the stack)",
    )
    eng.add_argument(
        "--batching",
        default=None,
        choices=["iteration", "request"],
        help="request: the paper's request-level baseline inside Orca (ablation)",
    )
    eng.add_argument(
        "--kernels",
        default="auto",
        choices=["auto", "torch", "triton"],
        help="the worker's kernels (orca.LLM(kernels=...), orca serve --kernels); auto: "
        "triton on CUDA",
    )
    eng.add_argument(
        "--cuda-graph-max-batch",
        type=int,
        default=256,
        help="decode steps of up to this many sequences replay CUDA graphs; 0: eager",
    )
    eng.add_argument("--kv-cache-memory-fraction", type=float, default=None)
    eng.add_argument(
        "--trace-runs",
        type=int,
        default=1,
        help="time the offline trace this many times on one engine (the table shows the "
        "first; the rest are recorded as orca_rerun: a slower first run shows one-time costs)",
    )
    eng.add_argument("--no-prefix-caching", action="store_true", help="enable_prefix_caching=False")
    st = ap.add_argument_group("full stack (bench/stack_bench.py)")
    if stack_mode:
        ap.set_defaults(stack=True)
    else:
        st.add_argument(
            "--stack",
            action="store_true",
            help="also serve the trace through the full stack (phases stack, stack_stream), "
            "after Orca in-process and before HF",
        )
    st.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="most HTTP requests in flight (default: all n at once)",
    )
    st.add_argument("--tp", type=int, default=1, help="stack: tensor-parallel ranks per stage")
    st.add_argument("--pp", type=int, default=1, help="stack: pipeline stages per pipeline")
    st.add_argument(
        "--pipelines", type=int, default=1, help="stack: pipelines (GPUs = pipelines*pp*tp)"
    )
    st.add_argument(
        "--stack-ready-timeout", type=float, default=300, help="seconds for the stack to be ready"
    )
    st.add_argument(
        "--stack-repeat",
        action="store_true",
        help="after the streaming pass, the non-streaming one again (phase stack_repeat, "
        "fresh prompts): tells a first-pass cost from one of the mode",
    )
    st.add_argument(
        "--stack-pid-file",
        default=None,
        help="write the stack's process ids here (a wrapper can kill them if we are killed)",
    )
    hf = ap.add_argument_group("HF peers")
    hf.add_argument("--bs", type=int, default=32, help="HF static batch size")
    on = ap.add_argument_group("online sweep (bench/online.py)")
    on.add_argument(
        "--rates",
        default="",
        help="comma-separated Poisson rates (req/s); empty: no online phases",
    )
    on.add_argument("--n-per-rate", type=int, default=96, help="requests per rate")
    on.add_argument(
        "--slo-ms",
        type=float,
        default=50.0,
        help="median normalized latency bound (ms/token) for the best rate within it",
    )
    hf.add_argument("--hf-cb-timeout", type=float, default=180, help="seconds")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="skip phases that would start after this many seconds (ends inside a timeout)",
    )
    return ap


def parse_args(argv: list[str] | None = None, stack_mode: bool = False) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = build_parser(stack_mode)
    args = ap.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(PHASES) - set(SKIP_GROUPS)
    if unknown:
        ap.error(f"unknown --skip names: {', '.join(sorted(unknown))}")
    for group, members in SKIP_GROUPS.items():
        if group in skip:
            skip |= set(members)
    if not args.stack:
        skip |= set(STACK_PHASES)
    try:
        args.rates = [float(x) for x in args.rates.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--rates takes numbers, got {args.rates!r}")
    if not args.rates:
        skip |= {"orca_online", "hf_online"}
    args.skip = skip
    return args


class Runner:
    """Runs phases in order: records each result, records each failure and goes on."""

    def __init__(self, rec: Recorder, skip: set[str], budget_s: float | None) -> None:
        self.rec, self.skip, self.budget_s = rec, skip, budget_s
        self.t0 = time.perf_counter()

    def phase(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """Run `fn` as phase `name` unless skipped or out of budget; None if it did not run."""
        if name in self.skip:
            return None
        elapsed = time.perf_counter() - self.t0
        if self.budget_s is not None and elapsed > self.budget_s:
            self.rec.record(f"{name}_skipped", reason=f"over budget at {elapsed:.0f} s")
            return None
        progress(f"{name}: start ({elapsed:.0f} s into the run)")
        t = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:
            traceback.print_exc()
            self.rec.record(f"{name}_error", error=error_text(exc))
            return None
        progress(f"{name}: done in {time.perf_counter() - t:.1f} s")
        return self.rec.record(name, **result)


def default_cpu_kv_blocks(n: int, max_num_seqs: int, block_size: int, shape: str) -> int:
    """A KV pool that holds every running sequence at the trace's longest length."""
    longest = min(512 + 128, max_model_len(shape))
    return min(n, max_num_seqs) * math.ceil(longest / block_size) + 16


def bytes_per_param(dtype: str) -> int:
    """Bytes of one weight in `dtype` (bfloat16 on the GPU, float32 in CPU smoke runs)."""
    return 4 if dtype in ("float32", "fp32") else 2


def with_mbu(
    result: dict[str, Any], shape: str, dtype: str, copy_gbps: float | None
) -> dict[str, Any]:
    """Add model-bandwidth utilization: weight bytes / time per token / copy bandwidth."""
    if copy_gbps:
        for key in ("ms_per_token", "decode_ms_per_token"):
            if result.get(key):
                seconds = result[key] / 1e3
                result[key.replace("ms_per_token", "mbu")] = (
                    weight_bytes(shape, bytes_per_param(dtype)) / seconds / (copy_gbps * 1e9)
                )
    return result


def kv_blocks(args: argparse.Namespace, device: str) -> int | None:
    """--num-kv-blocks, else None on cuda (the engine sizes its pool from free memory) and
    enough for the trace on cpu; the in-process engine and the stack's worker both get it."""
    if args.num_kv_blocks is None and not device.startswith("cuda"):
        return default_cpu_kv_blocks(args.n, args.max_num_seqs, args.block_size, args.shape)
    return args.num_kv_blocks


def run_orca(args: argparse.Namespace, runner: Runner, model_dir: str, requests, device: str):
    """The Orca phases; the engine is released before returning."""
    rec = runner.rec
    vocab = vocab_size(args.shape)
    copy_gbps = rec.results.get("ceil", {}).get("copy_GBps")
    num_kv_blocks = kv_blocks(args, device)
    holder: dict[str, Any] = {}

    def init() -> dict[str, Any]:
        t = time.perf_counter()
        llm, kwargs = orca_bench.make_llm(
            model_dir,
            device,
            args.dtype,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            block_size=args.block_size,
            num_kv_blocks=num_kv_blocks,
            kv_policy=args.kv_policy,
            batching=args.batching,
            overlap=args.overlap,
            kernels=args.kernels,
            cuda_graph_max_batch=args.cuda_graph_max_batch,
            kv_cache_memory_fraction=args.kv_cache_memory_fraction,
            enable_prefix_caching=not args.no_prefix_caching,
        )
        holder["llm"] = llm
        init_s = time.perf_counter() - t
        info = getattr(llm, "worker_info", None)
        engine = {"engine_kwargs": kwargs, "init_s": init_s}
        if info is not None:
            engine.update(num_kv_blocks=info.num_kv_blocks, max_model_len=info.max_model_len)
        engine["warmup_s"] = orca_bench.warm_up(llm, vocab)
        return engine

    if {"orca", "orca_b1", "orca_online"} <= runner.skip:
        return
    if runner.phase("orca_init", init) is None:
        return
    # holder keeps the only reference to the engine: cleared at the end to free the device
    runner.phase("orca", lambda: orca_bench.offline_trace(holder["llm"], requests, device))
    for _ in range(1, args.trace_runs):
        runner.phase(
            "orca_rerun", lambda: orca_bench.offline_trace(holder["llm"], requests, device)
        )
    runner.phase(
        "orca_b1",
        lambda: with_mbu(
            orca_bench.batch1_decode(holder["llm"], device, vocab),
            args.shape,
            args.dtype,
            copy_gbps,
        ),
    )
    runner.phase(
        "orca_online",
        lambda: online_result(
            online.orca_online_sweep(holder["llm"], requests, args.rates, args.n_per_rate, device),
            args.slo_ms,
        ),
    )
    orca_bench.shutdown(holder["llm"])
    holder.clear()


def run_hf(args: argparse.Namespace, runner: Runner, model_dir: str, requests, device: str):
    """The HF phases on a random-weight model of the same shape; released before returning."""
    rec = runner.rec
    copy_gbps = rec.results.get("ceil", {}).get("copy_GBps")
    if {"hf_b1", "hf_static", "hf_cb", "hf_online"} <= runner.skip:
        return
    holder: dict[str, Any] = {}

    def init() -> dict[str, Any]:
        t = time.perf_counter()
        holder["model"], params = peers_hf.make_model(model_dir, device, args.dtype)
        return {"params": params, "init_s": time.perf_counter() - t}

    if runner.phase("hf_init", init) is None:
        return
    vocab = vocab_size(args.shape)
    # The strongest peer first, the slowest last: a --budget-s cut drops static batching.
    runner.phase(
        "hf_cb",
        lambda: peers_hf.continuous_batching(holder["model"], requests, device, args.hf_cb_timeout),
    )
    runner.phase(
        "hf_online",
        lambda: online_result(
            online.hf_online_sweep(holder["model"], requests, device, args.rates, args.n_per_rate),
            args.slo_ms,
        ),
    )
    runner.phase(
        "hf_b1",
        lambda: with_mbu(
            peers_hf.batch1_decode(holder["model"], device, vocab),
            args.shape,
            args.dtype,
            copy_gbps,
        ),
    )
    runner.phase(
        "hf_static", lambda: peers_hf.static_batching(holder["model"], requests, args.bs, device)
    )
    holder.clear()


def online_result(rows: list[dict[str, Any]], slo_ms: float) -> dict[str, Any]:
    """An online phase's record: every rate's row and the best rate within the SLO."""
    return {
        "slo_ms": slo_ms,
        "max_rate_within_slo": online.max_rate_within(rows, slo_ms),
        "rows": rows,
    }


def online_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: per offered rate, Orca's and HF's median / p99 normalized latency and
    achieved rate, then the best rate of each within the SLO and their ratio."""
    orca, hf = results.get("orca_online", {}), results.get("hf_online", {})
    by_rate: dict[float, dict[str, dict[str, Any]]] = {}
    for name, phase in (("orca", orca), ("hf", hf)):
        for row in phase.get("rows", []):
            by_rate.setdefault(row["rate"], {})[name] = row
    slo = orca.get("slo_ms") or hf.get("slo_ms")
    lines = [
        "| offered req/s | Orca median / p99 ms/token | Orca TTFT p50 ms | Orca achieved req/s "
        "| HF CB median / p99 ms/token | HF achieved req/s |",
        "|---|---|---|---|---|---|",
    ]
    for rate in sorted(by_rate):
        o, h = by_rate[rate].get("orca", {}), by_rate[rate].get("hf", {})
        lines.append(
            f"| {_fmt(rate, 1)} | {_fmt(o.get('median_norm_ms'), 1)} / {_fmt(o.get('p99_norm_ms'), 1)} "
            f"| {_fmt(o.get('ttft_p50_ms'), 1)} | {_fmt(o.get('achieved_req_s'))} "
            f"| {_fmt(h.get('median_norm_ms'), 1)} / {_fmt(h.get('p99_norm_ms'), 1)} "
            f"| {_fmt(h.get('achieved_req_s'))} |"
        )
    best_o, best_h = orca.get("max_rate_within_slo"), hf.get("max_rate_within_slo")
    lines.append(
        f"\nHighest rate with median normalized latency ≤ {_fmt(slo, 0)} ms/token: Orca "
        f"{_fmt(best_o, 1)}, HF CB {_fmt(best_h, 1)} req/s ({_ratio(best_o, best_h)})."
    )
    return "\n".join(lines)


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if abs(x) < 1e4 else f"{x:.0f}"
    return str(x)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def summary_table(
    results: dict[str, dict[str, Any]], shape: str, n: int, dtype: str, bs: int = 32
) -> str:
    """The markdown summary of one run (`results`: the last row of each stage, as
    `Recorder.results` holds them): throughput with Orca/HF ratios, then batch-1 decode."""
    orca, static, cb = (results.get(k, {}) for k in ("orca", "hf_static", "hf_cb"))
    env, ceil = results.get("env", {}), results.get("ceil", {})
    lines = [
        f"### {shape}, n={n}, {env.get('gpu') or env.get('device')}, "
        f"torch {env.get('torch')}, transformers {env.get('transformers')}",
        "",
        f"| offline trace | Orca | HF static bs {bs} | HF CB | Orca / HF static | Orca / HF CB |",
        "|---|---|---|---|---|---|",
    ]
    for label, key in (("req/s", "req_s"), ("output tok/s", "out_tok_s")):
        o, s, c = orca.get(key), static.get(key), cb.get(key)
        lines.append(
            f"| {label} | {_fmt(o)} | {_fmt(s)} | {_fmt(c)} | {_ratio(o, s)} | {_ratio(o, c)} |"
        )
    lines.append(
        f"| seconds | {_fmt(orca.get('seconds'))} | {_fmt(static.get('seconds'))} | "
        f"{_fmt(cb.get('seconds'))} | | |"
    )
    ob1, hb1 = results.get("orca_b1", {}), results.get("hf_b1", {})
    copy_gbps = ceil.get("copy_GBps")
    wbytes = weight_bytes(shape, bytes_per_param(dtype))
    floor_ms = wbytes / (copy_gbps * 1e9) * 1e3 if copy_gbps else None
    lines += [
        "",
        "| batch-1 decode (prompt 128, 128 new) | Orca | HF | HF / Orca (speed-up) |",
        "|---|---|---|---|",
        f"| ms/token (whole generate / 128) | {_fmt(ob1.get('ms_per_token'))} | "
        f"{_fmt(hb1.get('ms_per_token'))} | "
        f"{_ratio(hb1.get('ms_per_token'), ob1.get('ms_per_token'))} |",
        f"| MBU | {_fmt(ob1.get('mbu'))} | {_fmt(hb1.get('mbu'))} | |",
        f"| Orca decode only, ms/token (MBU) | {_fmt(ob1.get('decode_ms_per_token'))} "
        f"({_fmt(ob1.get('decode_mbu'))}) | | |",
        "",
        f"Weights {wbytes / 1e9:.2f} GB ({param_count(shape)} params); "
        f"copy {_fmt(copy_gbps, 0)} GB/s, matmul {_fmt(ceil.get('matmul_TFLOPs'), 0)} TFLOP/s; "
        f"batch-1 floor {_fmt(floor_ms)} ms/token.",
    ]
    errors = [
        f"{k}: {v.get('error') or v.get('reason')}"
        for k, v in results.items()
        if k.endswith(("_error", "_skipped"))
    ]
    if errors:
        lines += ["", "Not measured: " + "; ".join(errors)]
    return "\n".join(lines)


def main(argv: list[str] | None = None, stack_mode: bool = False) -> int:
    """Run every phase not skipped and print the summary table(s)."""
    args = parse_args(argv, stack_mode)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    if not device.startswith("cuda"):
        torch.set_num_threads(args.cpu_threads)
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    rec = Recorder(args.out, run_id=run_id, shape=args.shape, n=args.n, dtype=args.dtype)
    runner = Runner(rec, args.skip, args.budget_s)
    rec.record("env", **env_info(device), argv=sys.argv[1:] if argv is None else argv)
    runner.phase("ceil", lambda: measure_ceilings(device))
    requests = trace(args.n, vocab_size(args.shape), seed=args.seed)
    rec.record(
        "trace",
        **trace_stats(requests),
        params=param_count(args.shape),
        weight_GB=weight_bytes(args.shape, bytes_per_param(args.dtype)) / 1e9,
    )
    stack = not set(STACK_PHASES) <= args.skip
    with tempfile.TemporaryDirectory(prefix=f"orca-bench-{args.shape}-") as model_dir:
        write_config(args.shape, model_dir)
        if stack:  # the gateway detokenizes; both engines then serve the same folder
            stack_bench.write_tokenizer(args.shape, model_dir)
        run_orca(args, runner, model_dir, requests, device)
        rec.record("orca_released", **free_device_memory(device))
        if stack:
            stack_bench.run_stack(
                args, runner, model_dir, requests, device, kv_blocks(args, device)
            )
        run_hf(args, runner, model_dir, requests, device)
        free_device_memory(device)
    rec.record("total", seconds=time.perf_counter() - runner.t0)
    tables = []
    if not (stack and {"orca_b1", "hf_cb", "hf_b1", "hf_static"} <= args.skip):
        tables.append(summary_table(rec.results, args.shape, args.n, args.dtype, args.bs))
    if args.rates:
        tables.append(online_table(rec.results))
    if stack:
        tables.append(stack_bench.stack_table(rec.results, args.shape, args.n))
    print("\n" + "\n\n".join(tables) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
