"""The end-to-end tests' `orca serve` configuration: a model in float32 on free ports."""

from __future__ import annotations

from pathlib import Path

from orca.embedded_redis import free_port
from orca.launcher import ServeConfig


def e2e_serve_config(
    model: str | Path, log_dir: str | Path, ready_timeout_s: float, **overrides
) -> ServeConfig:
    """`orca serve` of `model` (float32, free HTTP and gRPC ports, logs in `log_dir`)."""
    return ServeConfig(
        model=str(model),
        port=free_port(),
        grpc_port=free_port(),
        dtype="float32",
        ready_timeout_s=ready_timeout_s,
        log_dir=str(log_dir),
        **overrides,
    )
