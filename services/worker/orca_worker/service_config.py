"""The worker service's configuration: one dataclass, built once in `main()` from flags.

Every flag defaults from an `ORCA_*` environment variable (containers set those); the
environment is read only when `parse_config` is called, never at import time.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from orca_proto.env_flags import env_flag_adder
from orca_worker.parallel.distributed import DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_TIMEOUT_S
from orca_worker.parallel.topology import TopologyError, parse_layer_counts, place_of
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
    # host:port of the pipeline's rendezvous (its rank-0 worker); needed when tp * pp > 1.
    dist_init_addr: str | None = None
    # How long a collective or an activation receive may wait before the pipeline is broken.
    dist_timeout_s: float = DEFAULT_TIMEOUT_S
    # How long the rendezvous waits for the pipeline's other workers to start.
    dist_connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The `orca-worker` flags, each defaulting from its `ORCA_*` variable in `env`."""
    p = argparse.ArgumentParser(
        prog="orca-worker",
        description="Serve one model shard over gRPC (orca.v1.Worker): plans in, tokens out.",
    )

    flag = env_flag_adder(p, env)

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
    flag(
        "--kernels",
        "ORCA_KERNELS",
        "auto",
        "triton (orca_kernels: paged attention, fused norms, rotary, activations; sliding "
        "windows keep torch attention), torch, or auto: triton on CUDA, torch on CPU",
        choices=["auto", "torch", "triton"],
    )
    flag(
        "--cuda-graph-max-batch",
        "ORCA_CUDA_GRAPH_MAX_BATCH",
        "256",
        "decode steps of up to this many sequences replay CUDA graphs (CUDA, triton kernels, "
        "tp = pp = 1); 0: every step eager",
        type=int,
    )
    flag("--seed", "ORCA_SEED", "0", "seed of random weights and unseeded sampling", type=int)
    flag(
        "--drain-timeout-s",
        "ORCA_DRAIN_TIMEOUT_S",
        "30",
        "after SIGTERM, most seconds to let running sequences finish",
        type=float,
    )
    flag("--log-level", "ORCA_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR")
    # Topology: the ordinal gives pipeline, stage and TP rank; explicit flags override them.
    flag("--tp", "ORCA_TP", "1", "tensor-parallel ranks per pipeline stage", type=int)
    flag("--pp", "ORCA_PP", "1", "pipeline stages per pipeline", type=int)
    flag(
        "--ordinal",
        "ORCA_WORKER_ORDINAL",
        None,
        "worker index i: pipeline i // (pp*tp), stage (i // tp) %% pp, TP rank i %% tp",
        type=int,
    )
    flag("--pipeline", "ORCA_PIPELINE", None, "pipeline index (overrides --ordinal)", type=int)
    flag("--stage", "ORCA_STAGE", None, "pipeline stage (overrides --ordinal)", type=int)
    flag("--tp-rank", "ORCA_TP_RANK", None, "TP rank in the stage (overrides --ordinal)", type=int)
    flag(
        "--pp-layers",
        "ORCA_PP_LAYERS",
        None,
        "layers per stage, e.g. 12,12,8 (default: an even split)",
    )
    flag(
        "--dist-init-addr",
        "ORCA_DIST_INIT_ADDR",
        None,
        "host:port of the pipeline's rank-0 worker, where its workers meet; {first} and "
        "{pipeline} in it become that worker's ordinal and the pipeline index",
    )
    flag(
        "--dist-timeout-s",
        "ORCA_DIST_TIMEOUT_S",
        str(DEFAULT_TIMEOUT_S),
        "most seconds a collective or an activation receive may wait",
        type=float,
    )
    flag(
        "--dist-connect-timeout-s",
        "ORCA_DIST_CONNECT_TIMEOUT_S",
        str(DEFAULT_CONNECT_TIMEOUT_S),
        "most seconds to wait for the pipeline's other workers at startup",
        type=float,
    )
    return p


def parse_config(argv: Sequence[str] | None, env: Mapping[str, str]) -> WorkerServiceConfig:
    """Parse flags (falling back to `env`) into a WorkerServiceConfig; exits on bad flags."""
    parser = build_parser(env)
    args = parser.parse_args(argv)
    if not args.model:
        parser.error("--model (or ORCA_MODEL) is required")
    try:
        place = place_of(args.ordinal or 0, args.pp, args.tp)
        overrides = {
            name: value
            for name, value in (
                ("pipeline", args.pipeline),
                ("stage", args.stage),
                ("tp_rank", args.tp_rank),
            )
            if value is not None
        }
        place = dataclasses.replace(place, **overrides)
        pp_layers = parse_layer_counts(args.pp_layers) if args.pp_layers else None
        if pp_layers is not None and len(pp_layers) != args.pp:
            raise TopologyError(f"--pp-layers has {len(pp_layers)} counts for --pp {args.pp}")
    except TopologyError as exc:
        parser.error(str(exc))
    if place.world_size > 1 and not args.dist_init_addr:
        parser.error("--dist-init-addr (or ORCA_DIST_INIT_ADDR) is required when tp * pp > 1")
    runner = RunnerConfig(
        model_dir=args.model,
        dtype=args.dtype,
        device=args.device,
        block_size=args.block_size,
        num_kv_blocks=args.num_kv_blocks,
        kv_cache_memory_fraction=args.kv_cache_memory_fraction,
        load_format=args.load_format,
        seed=args.seed,
        kernels=args.kernels,
        cuda_graph_max_batch=args.cuda_graph_max_batch,
        place=place,
        pp_layers=pp_layers,
    )
    return WorkerServiceConfig(
        runner=runner,
        host=args.host,
        port=args.port,
        log_level=args.log_level.upper(),
        drain_timeout_s=args.drain_timeout_s,
        dist_init_addr=args.dist_init_addr,
        dist_timeout_s=args.dist_timeout_s,
        dist_connect_timeout_s=args.dist_connect_timeout_s,
    )
