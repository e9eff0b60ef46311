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

from orca_proto.env_flags import env_flag_adder
from orca_proto.topology import Topology


@dataclass(frozen=True)
class SchedulerServiceConfig:
    """How to run the scheduler service: where Redis and the workers are, and the policy."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    # Topology: pipelines of `pp` stages of `tp` tensor-parallel ranks (see topology.py).
    tp: int = 1
    pp: int = 1
    # Where the workers come from: "static" (`workers`) or "kubernetes" (a pod watch).
    discovery: str = "static"
    # Static: host:port of every worker, in ordinal order (pp·tp per pipeline).
    workers: tuple[str, ...] = ("127.0.0.1:50051",)
    # Pipelines to wait for at startup (up to connect_timeout_s): static, all of them.
    expected_pipelines: int = 1
    # Kubernetes: the worker pods (namespace, label selector), their gRPC port, and the
    # API's URL ("" = in-cluster; a URL for tests or `kubectl proxy`).
    k8s_namespace: str = ""
    k8s_label_selector: str = "app.kubernetes.io/component=worker"
    k8s_worker_port: int = 50051
    k8s_api_url: str = ""
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    kv_policy: str = "paged"
    enable_prefix_caching: bool = True
    # Overlapped scheduling (tp = pp = 1): the next plan goes out while the current one runs.
    # The command line turns it on for single-worker pipelines unless told otherwise.
    overlap: bool = False
    # The model name published in `orca:load`; empty means the worker's model name.
    served_model_name: str = ""
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 0  # 0: no Prometheus endpoint
    # This scheduler's name in the `schedulers` consumer group (stable across restarts
    # lets a restart find its own pending requests at once).
    consumer_name: str = ""
    log_level: str = "INFO"
    # At startup, wait this long for the expected pipelines.
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


def _env_bool(env: Mapping[str, str], var: str, default: bool | None) -> bool | None:
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

    flag = env_flag_adder(p, env)

    flag("--redis-url", "ORCA_REDIS_URL", SchedulerServiceConfig.redis_url, "Redis URL")
    flag("--tp", "ORCA_TP", "1", "tensor-parallel ranks per pipeline stage", type=int)
    flag("--pp", "ORCA_PP", "1", "pipeline stages per pipeline (plans in flight)", type=int)
    flag(
        "--discovery",
        "ORCA_DISCOVERY",
        "static",
        "where the workers come from: static (--workers) or kubernetes (a pod watch)",
        choices=("static", "kubernetes"),
    )
    flag(
        "--workers",
        "ORCA_WORKERS",
        "127.0.0.1:50051",
        "static discovery: comma-separated host:port of every worker in ordinal order; "
        "worker i is pipeline i // (pp*tp), stage (i // tp) %% pp, rank i %% tp",
    )
    flag(
        "--pipelines",
        "ORCA_PIPELINES",
        "0",
        "expected pipelines, waited for at startup (static: checked against --workers, "
        "default all of them; kubernetes: default 1)",
        type=int,
    )
    flag(
        "--k8s-namespace",
        "ORCA_K8S_NAMESPACE",
        "",
        "kubernetes discovery: the workers' namespace (default: the scheduler pod's own)",
    )
    flag(
        "--k8s-label-selector",
        "ORCA_K8S_LABEL_SELECTOR",
        SchedulerServiceConfig.k8s_label_selector,
        "kubernetes discovery: label selector of the worker pods (one StatefulSet)",
    )
    flag(
        "--k8s-worker-port",
        "ORCA_K8S_WORKER_PORT",
        "50051",
        "kubernetes discovery: the workers' gRPC port",
        type=int,
    )
    flag(
        "--k8s-api-url",
        "ORCA_K8S_API_URL",
        "",
        "kubernetes discovery: API URL without auth (tests, kubectl proxy); "
        "default in-cluster (service account token and CA)",
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
    p.add_argument(
        "--overlap",
        action=argparse.BooleanOptionalAction,
        default=_env_bool(env, "ORCA_OVERLAP", None),
        help="overlapped scheduling (tp = pp = 1 only): send the next plan while the current "
        "one runs, its decodes fed the worker's last sampled token (env ORCA_OVERLAP; "
        "default: on with --tp 1 --pp 1, off otherwise)",
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
        "at startup, wait this long for the expected pipelines",
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
    if args.tp < 1 or args.pp < 1:
        parser.error("--tp and --pp must be >= 1")
    topology = Topology(pp=args.pp, tp=args.tp)
    workers = tuple(w.strip() for w in args.workers.split(",") if w.strip())
    expected = args.pipelines
    if args.discovery == "static":
        for address in workers:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                parser.error(f"--workers: {address!r} is not host:port")
        try:
            num_pipelines = topology.num_pipelines(len(workers))
        except ValueError as exc:
            parser.error(f"--workers: {exc}")
        if num_pipelines == 0:
            parser.error("--workers: at least one pipeline of workers is needed")
        if expected and expected != num_pipelines:
            parser.error(
                f"--pipelines {expected}, but --workers lists {num_pipelines} pipeline(s) of "
                f"pp={args.pp} x tp={args.tp}"
            )
        expected = num_pipelines
    if expected < 0 or args.k8s_worker_port < 1:
        parser.error("--pipelines must be >= 0 and --k8s-worker-port >= 1")
    for name in ("max_num_seqs", "max_num_batched_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.claim_idle_s <= 0 or args.connect_timeout_s < 0:
        parser.error("--claim-idle-s must be > 0 and --connect-timeout-s >= 0")
    single_worker = (args.tp, args.pp) == (1, 1)
    if args.overlap and not single_worker:
        parser.error("--overlap needs single-worker pipelines (--tp 1 --pp 1)")
    return SchedulerServiceConfig(
        redis_url=args.redis_url,
        tp=args.tp,
        pp=args.pp,
        discovery=args.discovery,
        workers=workers,
        expected_pipelines=max(expected, 1),
        k8s_namespace=args.k8s_namespace,
        k8s_label_selector=args.k8s_label_selector,
        k8s_worker_port=args.k8s_worker_port,
        k8s_api_url=args.k8s_api_url,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        kv_policy=args.kv_policy,
        enable_prefix_caching=args.enable_prefix_caching,
        overlap=single_worker if args.overlap is None else args.overlap,
        served_model_name=args.served_model_name,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        consumer_name=args.consumer_name or default_consumer_name(),
        log_level=args.log_level.upper(),
        connect_timeout_s=args.connect_timeout_s,
        claim_idle_s=args.claim_idle_s,
    )
