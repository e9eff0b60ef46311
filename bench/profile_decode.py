"""Where one Orca decode step spends its time, at a given batch size, under torch.profiler.

    python bench/profile_decode.py --shape llama8b --batch-sizes 32,1 --steps 8

For each batch size B: B requests are prefilled, a few decode steps warm up (graph capture,
caches), then `--steps` decode steps are profiled. The step loop is driven here the way
`LLM.generate` drives it (scheduler.schedule -> runner.execute -> scheduler.update), each
part in its own `record_function` range, so the report splits a step into

  - GPU busy: the union of the step's kernel intervals (what the device computed);
  - host only: the rest of the step's wall time (plan build, input preparation, launches,
    sampling bookkeeping, result folding) while the GPU idles;
  - the host phases: schedule (plan build), execute (the worker: prepare, forward, sample,
    also from the worker's own StepTimings where it fills them), update (scheduler fold-in);

and prints the top operations by device time. If the engine's pieces are not where this
script looks (they are private), it profiles whole `generate` calls instead and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import orca_bench
from bench.common import Recorder, env_info, error_text, progress, sync
from bench.shapes import SHAPES, vocab_size, write_config

STEP, SCHEDULE, EXECUTE, UPDATE = "orca.step", "orca.schedule", "orca.execute", "orca.update"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(
        description="Profile Orca decode steps: GPU-busy vs host time, top ops.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--shape", default="llama8b", choices=sorted(SHAPES))
    ap.add_argument("--batch-sizes", default="32,1", help="comma-separated decode batch sizes")
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--warmup-steps", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8, help="decode steps profiled per batch size")
    ap.add_argument("--top", type=int, default=20, help="operations listed")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    ap.add_argument(
        "--cpu-threads",
        type=int,
        default=1,
        help="torch threads on cpu (smoke runs: tiny ops gain nothing from more, and suffer "
        "most when other jobs share the cores)",
    )
    ap.add_argument("--num-kv-blocks", type=int, default=None)
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--out", default=None, help="append JSON lines to this .jsonl file")
    ap.add_argument(
        "--trace-dir", default=None, help="write a gzipped Chrome trace per batch size here"
    )
    return ap.parse_args(argv)


# --- driving the engine one step at a time ---------------------------------------------


class StepDriver:
    """The pieces of `orca.LLM` that make one iteration, found by name (they are private)."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        self.scheduler = llm.scheduler
        executor = llm.executor
        runner = getattr(executor, "runner", None)
        if runner is not None and callable(getattr(runner, "execute", None)):
            self._execute = runner.execute
        else:  # any Executor: run its coroutine to completion

            def run(plan: Any) -> Any:
                return asyncio.run(executor.submit(plan))

            self._execute = run
        for name in ("schedule", "update", "add_request", "has_unfinished"):
            if not callable(getattr(self.scheduler, name, None)):
                raise AttributeError(f"llm.scheduler has no {name}()")
        if not callable(getattr(llm, "_make_request", None)):
            raise AttributeError("llm has no _make_request()")

    def add(self, prompts: list[list[int]], max_tokens: int) -> None:
        """Queue greedy requests (EOS ignored) of `max_tokens` tokens each."""
        for prompt in prompts:
            self.scheduler.add_request(
                self.llm._make_request(prompt, orca_bench.greedy(max_tokens))
            )

    def step(self, device: str) -> dict[str, Any]:
        """One iteration, each part timed on the host clock (synchronized at the end)."""
        from torch.profiler import record_function

        t0 = time.perf_counter()
        with record_function(STEP):
            with record_function(SCHEDULE):
                plan = self.scheduler.schedule()
            t1 = time.perf_counter()
            if plan is None:
                raise RuntimeError("the scheduler produced no plan")
            with record_function(EXECUTE):
                result = self._execute(plan)
                sync(device)
            t2 = time.perf_counter()
            if getattr(result, "error", ""):
                raise RuntimeError(f"the worker failed the step: {result.error}")
            with record_function(UPDATE):
                self.scheduler.update(result)
        t3 = time.perf_counter()
        steps = list(getattr(plan, "steps", []))
        timings = getattr(result, "timings", None)
        return {
            "num_seqs": len(steps),
            "num_tokens": sum(len(s.token_ids) for s in steps),
            "step_ms": (t3 - t0) * 1e3,
            "schedule_ms": (t1 - t0) * 1e3,
            "execute_ms": (t2 - t1) * 1e3,
            "update_ms": (t3 - t2) * 1e3,
            "worker_prepare_ms": getattr(timings, "prepare_ms", None),
            "worker_forward_ms": getattr(timings, "forward_ms", None),
            "worker_sample_ms": getattr(timings, "sample_ms", None),
        }

    def drain(self, device: str, max_steps: int = 10_000) -> None:
        """Run the remaining iterations, so the engine is empty for the next batch size."""
        for _ in range(max_steps):
            if not self.scheduler.has_unfinished():
                return
            self.step(device)


# --- reading the profile -----------------------------------------------------------------


def _union_us(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


LABELS = (STEP, SCHEDULE, EXECUTE, UPDATE)


def _is_ours(e: Any) -> bool:
    """Our record_function ranges (and their GPU-side annotation twins)."""
    name = getattr(e, "key", None) or getattr(e, "name", "")
    return bool(getattr(e, "is_user_annotation", False)) or name in LABELS


def gpu_busy_per_step(prof: Any) -> list[dict[str, float]]:
    """For each `orca.step` range: its wall time and the union of device activity in it
    (kernels, copies, memsets; not the annotation spans the profiler mirrors on the GPU)."""
    from torch.autograd import DeviceType

    events = prof.events()
    steps = sorted(
        (e.time_range.start, e.time_range.end)
        for e in events
        if e.name == STEP and e.device_type == DeviceType.CPU
    )
    kernels = [
        (e.time_range.start, e.time_range.end)
        for e in events
        if e.device_type == DeviceType.CUDA and not _is_ours(e)
    ]
    rows = []
    for s, e in steps:
        clipped = [(max(ks, s), min(ke, e)) for ks, ke in kernels if ke > s and ks < e]
        rows.append({"wall_us": e - s, "gpu_busy_us": _union_us(clipped)})
    return rows


def _rows(averages: list[Any], key: str, n: int, steps: int) -> list[dict[str, Any]]:
    total = sum(getattr(a, key) for a in averages) or 1
    top = sorted(averages, key=lambda a: getattr(a, key), reverse=True)[:n]
    return [
        {
            "op": a.key[:90],
            "calls_per_step": a.count / max(steps, 1),
            "ms_per_step": getattr(a, key) / 1e3 / max(steps, 1),
            "share": getattr(a, key) / total,
        }
        for a in top
    ]


def top_ops(prof: Any, n: int, steps: int) -> dict[str, list[dict[str, Any]]]:
    """The heaviest entries of the profile, `n` of each kind:

    - `device_ops`: torch ops by the device time of the kernels they launched (eager code);
    - `kernels`: the kernels themselves (also those replayed from CUDA graphs);
    - `host`: self CPU time; our own ranges' self time is Python outside any torch op.
    """
    from torch.autograd import DeviceType

    averages = list(prof.key_averages())
    theirs = [a for a in averages if not _is_ours(a)]
    kernels = [a for a in theirs if a.device_type == DeviceType.CUDA]
    device_ops = [
        a for a in theirs if a.device_type == DeviceType.CPU and a.self_device_time_total > 0
    ]
    host = [a for a in averages if a.device_type == DeviceType.CPU]  # our ranges included
    return {
        "device_ops": _rows(device_ops, "self_device_time_total", n, steps),
        "kernels": _rows(kernels, "self_device_time_total", n, steps),
        "host": _rows(host, "self_cpu_time_total", n, steps),
    }


def host_ranges(prof: Any, steps: int) -> dict[str, float]:
    """Mean CPU wall ms per step of each of our record_function ranges."""
    out = {}
    for a in prof.key_averages():
        if a.key in (STEP, SCHEDULE, EXECUTE, UPDATE):
            out[a.key] = a.cpu_time_total / 1e3 / max(steps, 1)
    return out


def _activities(device: str) -> list[Any]:
    from torch.profiler import ProfilerActivity

    acts = [ProfilerActivity.CPU]
    if device.startswith("cuda"):
        acts.append(ProfilerActivity.CUDA)
    return acts


def _save_trace(prof: Any, trace_dir: str | None, name: str) -> str | None:
    if not trace_dir:
        return None
    Path(trace_dir).mkdir(parents=True, exist_ok=True)
    target = Path(trace_dir) / f"{name}.json.gz"
    with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
        prof.export_chrome_trace(tmp.name)
        with open(tmp.name, "rb") as src, gzip.open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return str(target)


# --- the two ways of profiling ---------------------------------------------------------


def profile_steps(
    driver: StepDriver, args: argparse.Namespace, bs: int, device: str
) -> dict[str, Any]:
    """Prefill `bs` requests, warm up, time `args.steps` decode steps without the profiler
    (its own overhead inflates host time), then profile as many more."""
    from torch.profiler import profile

    rng = random.Random(1000 + bs)
    vocab = vocab_size(args.shape)
    prompts = [[rng.randrange(10, vocab) for _ in range(args.prompt_len)] for _ in range(bs)]
    driver.add(prompts, max_tokens=args.warmup_steps + 2 * args.steps + 4)
    # Prefill (possibly chunked) until one plan decodes all bs sequences, then warm up.
    for _ in range(1000):
        s = driver.step(device)
        if s["num_seqs"] == bs and s["num_tokens"] == bs:
            break
    else:
        raise RuntimeError(f"never reached a pure decode step of {bs} sequences")
    for _ in range(args.warmup_steps):
        driver.step(device)
    plain = [driver.step(device) for _ in range(args.steps)]
    with profile(activities=_activities(device)) as prof:
        per_step = [driver.step(device) for _ in range(args.steps)]
    driver.drain(device)
    if any(s["num_tokens"] != bs for s in plain + per_step):
        raise RuntimeError(f"a timed step was not a decode step of {bs}: {plain + per_step}")
    result = _report(prof, per_step, args, bs, device, mode="step")
    result["unprofiled_step_ms"] = statistics.median(s["step_ms"] for s in plain)
    return result


def profile_generate(llm: Any, args: argparse.Namespace, bs: int, device: str) -> dict[str, Any]:
    """Fallback: profile whole generate calls (1 prefill + `steps` decode steps each)."""
    from torch.profiler import profile, record_function

    rng = random.Random(1000 + bs)
    vocab = vocab_size(args.shape)
    prompts = [[rng.randrange(10, vocab) for _ in range(args.prompt_len)] for _ in range(bs)]
    params = orca_bench.greedy(args.steps + 1)
    llm.generate(prompt_token_ids=prompts, sampling_params=params)  # warm-up (prefix cached)
    sync(device)
    t = time.perf_counter()
    with profile(activities=_activities(device)) as prof, record_function(STEP):
        llm.generate(prompt_token_ids=prompts, sampling_params=params)
        sync(device)
    wall_ms = (time.perf_counter() - t) * 1e3
    per_step = [{"step_ms": wall_ms / (args.steps + 1), "num_seqs": bs, "num_tokens": bs}]
    return _report(prof, per_step, args, bs, device, mode="generate")


def _report(prof, per_step, args, bs: int, device: str, mode: str) -> dict[str, Any]:
    busy = gpu_busy_per_step(prof)
    steps = args.steps if mode == "step" else args.steps + 1
    wall_us = sum(b["wall_us"] for b in busy)
    busy_us = sum(b["gpu_busy_us"] for b in busy)

    def med(key: str) -> float | None:
        vals = [s[key] for s in per_step if s.get(key) is not None]
        return statistics.median(vals) if vals else None

    result = {
        "mode": mode,
        "batch_size": bs,
        "steps": steps,
        "step_ms": med("step_ms") if mode == "step" else wall_us / 1e3 / steps,
        "gpu_busy_ms": busy_us / 1e3 / steps if device.startswith("cuda") else None,
        "gpu_busy_frac": busy_us / wall_us if wall_us and device.startswith("cuda") else None,
        "host_only_ms": (wall_us - busy_us) / 1e3 / steps if device.startswith("cuda") else None,
        "schedule_ms": med("schedule_ms"),
        "execute_ms": med("execute_ms"),
        "update_ms": med("update_ms"),
        "worker_prepare_ms": med("worker_prepare_ms"),
        "worker_forward_ms": med("worker_forward_ms"),
        "worker_sample_ms": med("worker_sample_ms"),
        "profiled_ranges_ms": host_ranges(prof, steps),
        "top_ops": top_ops(prof, args.top, steps),
    }
    result["chrome_trace"] = _save_trace(prof, args.trace_dir, f"decode_{args.shape}_bs{bs}")
    return result


def print_report(r: dict[str, Any]) -> None:
    """A readable summary of one batch size's profile."""

    def f(x: Any) -> str:
        return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)

    frac = r["gpu_busy_frac"]
    print(
        f"\n## decode step, batch {r['batch_size']} ({r['mode']} mode, {r['steps']} steps)\n"
        f"step {f(r.get('unprofiled_step_ms'))} ms unprofiled; profiled: "
        f"step {f(r['step_ms'])} ms = GPU busy {f(r['gpu_busy_ms'])} ms "
        f"({'-' if frac is None else f'{100 * frac:.0f}%'}) + host only {f(r['host_only_ms'])} ms\n"
        f"host phases: schedule {f(r['schedule_ms'])} ms, execute {f(r['execute_ms'])} ms "
        f"(worker: prepare {f(r['worker_prepare_ms'])}, forward {f(r['worker_forward_ms'])}, "
        f"sample {f(r['worker_sample_ms'])}), update {f(r['update_ms'])} ms\n",
        flush=True,
    )
    titles = {
        "device_ops": "torch op, by device time of its kernels",
        "kernels": "kernel, by device time",
        "host": "host, by self CPU time (orca.* self = Python outside torch ops)",
    }
    for kind, title in titles.items():
        rows = r["top_ops"].get(kind) or []
        if not rows:
            continue
        print(f"\n| {title} | calls/step | ms/step | share |\n|---|---|---|---|")
        for op in rows:
            print(
                f"| {op['op']} | {op['calls_per_step']:.1f} | {op['ms_per_step']:.3f} | "
                f"{100 * op['share']:.1f}% |"
            )
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """Profile each batch size; one JSON line and one printed summary per batch size."""
    args = parse_args(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    if not device.startswith("cuda"):
        torch.set_num_threads(args.cpu_threads)
    sizes = [int(x) for x in args.batch_sizes.split(",") if x.strip()]
    rec = Recorder(args.out, shape=args.shape, dtype=args.dtype, tool="profile_decode")
    rec.record("env", **env_info(device))
    num_kv_blocks = args.num_kv_blocks
    if num_kv_blocks is None and not device.startswith("cuda"):
        longest = args.prompt_len + args.warmup_steps + args.steps + 16
        num_kv_blocks = max(sizes) * (longest // 16 + 2) + 16
    with tempfile.TemporaryDirectory(prefix=f"orca-profile-{args.shape}-") as model_dir:
        write_config(args.shape, model_dir)
        progress(f"building the engine ({args.shape}, {device}, {args.dtype})")
        llm, _ = orca_bench.make_llm(
            model_dir,
            device,
            args.dtype,
            max_num_seqs=max(sizes),
            max_num_batched_tokens=args.max_num_batched_tokens,
            num_kv_blocks=num_kv_blocks,
        )
        orca_bench.warm_up(llm, vocab_size(args.shape))
        try:
            driver: StepDriver | None = StepDriver(llm)
        except AttributeError as exc:
            progress(f"step-level profiling unavailable ({exc}); profiling generate calls")
            driver = None
        for bs in sizes:
            progress(f"profiling decode at batch {bs}")
            try:
                if driver is not None:
                    result = profile_steps(driver, args, bs, device)
                else:
                    result = profile_generate(llm, args, bs, device)
            except Exception as exc:
                import traceback

                traceback.print_exc()
                rec.record("decode_profile_error", batch_size=bs, error=error_text(exc))
                continue
            rec.record("decode_profile", **result)
            print_report(result)
        orca_bench.shutdown(llm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
