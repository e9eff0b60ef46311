"""A real gateway in a background thread, for the gateway tests (imported by conftest.py
and the tests; conftest modules are not importable by name across test folders)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import replace

from orca.embedded_redis import free_port
from orca_gateway.config import GatewayConfig
from orca_gateway.server import GatewayServer

MODEL_NAME = "demo-model"


def gateway_config(model_dir, redis_url: str, **overrides) -> GatewayConfig:
    """A test gateway's config: free ports, fast staleness, no load caching."""
    config = GatewayConfig(
        model=str(model_dir),
        port=0,
        grpc_port=free_port(),
        redis_url=redis_url,
        load_stale_after_s=2.0,
        load_cache_s=0.0,
        # Long on purpose: new requests must be read at once through the wake stream.
        reader_block_ms=10_000,
        shutdown_grace_s=2.0,
        log_level="warning",
    )
    return replace(config, **overrides)


@contextlib.contextmanager
def running_gateway(config: GatewayConfig):
    """A GatewayServer serving from its own thread and event loop; stopped on exit."""
    server = GatewayServer(config)
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            asyncio.run(server.run())
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=serve, name="gateway", daemon=True)
    thread.start()
    try:
        while not server.started.wait(0.05):
            if not thread.is_alive():
                raise RuntimeError(f"gateway did not start: {errors}")
        yield server
    finally:
        server.request_stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "gateway did not stop"
