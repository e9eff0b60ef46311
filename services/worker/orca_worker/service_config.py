"""The worker service's configuration: one dataclass, built once in `main()` from flags.

Every flag defaults from an `ORCA_*` environment variable (containers set those); the
environment is read only when `parse_config` is called, never at import time.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from orca_worker.runner import RunnerConfig


@dataclass(frozen=True)
class WorkerServiceConfig:
    """How to run one worker process: its model runner and its gRPC endpoint."""

    runner: RunnerConfig
    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port (the ready line prints the one bound)
    log_level: str = "INFO"
    # After SIGTERM: how long to wait for running sequences to finish before stopping.
    drain_timeout_s: float = 30.0
    # Largest StepPlan / StepResult accepted on the wire.
    max_message_bytes: int = 64 * 1024 * 1024


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The `orca-worker` flags, each defaulting from its `ORCA_*` variable in `env`."""
    p = argparse.ArgumentParser(
        prog="orca-worker",
        description="Serve one model shard over gRPC (orca.v1.Worker): plans in, tokens out.",
    )

    def flag(name: str, var: str, default: str | None, help_: str, **kwargs) -> None:
        p.add_argument(name, default=env.get(var, default), help=f"{help_} (env {var})", **kwargs)

    flag("--model", "ORCA_MODEL", None, "HF-format checkpoint folder")
    flag("--host", "ORCA_WORKER_HOST", "127.0.0.1", "address to listen on")
    flag("--port", "ORCA_WORKER_PORT", "50051", "port to listen on; 0 picks a free one", type=int)
    flag("--device", "ORCA_DEVICE", "cpu", "cpu or cuda")
    flag("--dtype", "ORCA_DTYPE", "auto", "auto, float32, float16 or bfloat16")
    flag("--block-size", "ORCA_BLOCK_SIZE", "16", "tokens per KV block", type=int)
    flag(
        "--num-kv-blocks",
        "ORCA_NUM_KV_BLOCKS",
        None,
        "KV pool size in blocks; unset sizes it from memory",
        type=int,
    )
    flag(
        "--kv-cache-memory-fraction",
        "ORCA_KV_CACHE_MEMORY_FRACTION",
        "0.9",
        "share of free GPU memory the KV pool takes",
        type=float,
    )
    flag("--load-format", "ORCA_LOAD_FORMAT", "safetensors", "safetensors, or random weights")
    flag("--seed", "ORCA_SEED", "0", "seed of random weights and unseeded sampling", type=int)
    flag(
        "--drain-timeout-s",
        "ORCA_DRAIN_TIMEOUT_S",
        "30",
        "after SIGTERM, most seconds to let running sequences finish",
        type=float,
    )
    flag("--log-level", "ORCA_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR")
    return p


def parse_config(argv: Sequence[str] | None, env: Mapping[str, str]) -> WorkerServiceConfig:
    """Parse flags (falling back to `env`) into a WorkerServiceConfig; exits on bad flags."""
    parser = build_parser(env)
    args = parser.parse_args(argv)
    if not args.model:
        parser.error("--model (or ORCA_MODEL) is required")
    runner = RunnerConfig(
        model_dir=args.model,
        dtype=args.dtype,
        device=args.device,
        block_size=args.block_size,
        num_kv_blocks=args.num_kv_blocks,
        kv_cache_memory_fraction=args.kv_cache_memory_fraction,
        load_format=args.load_format,
        seed=args.seed,
    )
    return WorkerServiceConfig(
        runner=runner,
        host=args.host,
        port=args.port,
        log_level=args.log_level.upper(),
        drain_timeout_s=args.drain_timeout_s,
    )
