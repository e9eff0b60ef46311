"""The scheduler service's configuration: one dataclass, built once in `main()` from flags.

Every flag defaults from an `ORCA_*` environment variable (containers set those); the
environment is read only when `parse_config` is called, never at import time.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SchedulerServiceConfig:
    """How to run the scheduler service: where Redis and the workers are, and the policy."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    # host:port of each pipeline's worker (one pipeline of one worker for now).
    workers: tuple[str, ...] = ("127.0.0.1:50051",)
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    kv_policy: str = "paged"
    enable_prefix_caching: bool = True
    # The model name published in `orca:load`; empty means the worker's model name.
    served_model_name: str = ""
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 0  # 0: no Prometheus endpoint
    # This scheduler's name in the `schedulers` consumer group (stable across restarts
    # lets a restart find its own pending requests at once).
    consumer_name: str = ""
    log_level: str = "INFO"
    # Keep retrying to reach the workers for this long at startup.
    connect_timeout_s: float = 60.0
    # A pending request idle this long belongs to a dead scheduler: claim and resume it.
    claim_idle_s: float = 30.0
    # How often `orca:load` is refreshed.
    load_report_interval_s: float = 0.5
    # Largest StepPlan / StepResult on the wire.
    max_message_bytes: int = 64 * 1024 * 1024


def default_consumer_name() -> str:
    """hostname-pid: unique per process."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _env_bool(env: Mapping[str, str], var: str, default: bool) -> bool:
    value = env.get(var)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The `orca-scheduler` flags, each defaulting from its `ORCA_*` variable in `env`."""
    p = argparse.ArgumentParser(
        prog="orca-scheduler",
        description="Iteration-level scheduler: Redis requests in, StepPlans to workers, "
        "tokens back to Redis.",
    )

    def flag(name: str, var: str, default: str | None, help_: str, **kwargs) -> None:
        p.add_argument(name, default=env.get(var, default), help=f"{help_} (env {var})", **kwargs)

    flag("--redis-url", "ORCA_REDIS_URL", SchedulerServiceConfig.redis_url, "Redis URL")
    flag(
        "--workers",
        "ORCA_WORKERS",
        "127.0.0.1:50051",
        "worker address host:port (one pipeline; a comma-separated list is reserved for "
        "several pipelines)",
    )
    flag("--max-num-seqs", "ORCA_MAX_NUM_SEQS", "256", "most requests in one batch", type=int)
    flag(
        "--max-num-batched-tokens",
        "ORCA_MAX_NUM_BATCHED_TOKENS",
        "8192",
        "most tokens (prompt chunks plus decodes) in one iteration",
        type=int,
    )
    flag(
        "--kv-policy",
        "ORCA_KV_POLICY",
        "paged",
        "paged, or reserve (the Orca paper's)",
        choices=("paged", "reserve"),
    )
    p.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=_env_bool(env, "ORCA_ENABLE_PREFIX_CACHING", True),
        help="reuse the KV blocks of shared prompt prefixes (env ORCA_ENABLE_PREFIX_CACHING)",
    )
    flag(
        "--served-model-name",
        "ORCA_SERVED_MODEL_NAME",
        "",
        "model name published for the gateway; default the worker's",
    )
    flag("--metrics-host", "ORCA_SCHEDULER_METRICS_HOST", "0.0.0.0", "Prometheus address")
    flag(
        "--metrics-port",
        "ORCA_SCHEDULER_METRICS_PORT",
        "0",
        "Prometheus port; 0 disables",
        type=int,
    )
    flag("--consumer-name", "ORCA_CONSUMER_NAME", "", "consumer name; default hostname-pid")
    flag(
        "--connect-timeout-s",
        "ORCA_CONNECT_TIMEOUT_S",
        "60",
        "keep retrying the workers this long at startup",
        type=float,
    )
    flag(
        "--claim-idle-s",
        "ORCA_CLAIM_IDLE_S",
        "30",
        "claim (and resume) requests pending this long on another scheduler",
        type=float,
    )
    flag("--log-level", "ORCA_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR")
    return p


def parse_config(argv: Sequence[str] | None, env: Mapping[str, str]) -> SchedulerServiceConfig:
    """Parse flags (falling back to `env`) into a SchedulerServiceConfig; exits on bad flags."""
    parser = build_parser(env)
    args = parser.parse_args(argv)
    workers = tuple(w.strip() for w in args.workers.split(",") if w.strip())
    if len(workers) != 1:
        parser.error(f"--workers: exactly one worker for now (one pipeline), got {workers}")
    for address in workers:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            parser.error(f"--workers: {address!r} is not host:port")
    for name in ("max_num_seqs", "max_num_batched_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.claim_idle_s <= 0 or args.connect_timeout_s < 0:
        parser.error("--claim-idle-s must be > 0 and --connect-timeout-s >= 0")
    return SchedulerServiceConfig(
        redis_url=args.redis_url,
        workers=workers,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        kv_policy=args.kv_policy,
        enable_prefix_caching=args.enable_prefix_caching,
        served_model_name=args.served_model_name,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        consumer_name=args.consumer_name or default_consumer_name(),
        log_level=args.log_level.upper(),
        connect_timeout_s=args.connect_timeout_s,
        claim_idle_s=args.claim_idle_s,
    )
