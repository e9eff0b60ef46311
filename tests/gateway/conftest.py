"""Fixtures of the gateway tests: the demo tokenizer, a real gateway (HTTP + gRPC in a
background thread) on real Redis, and the stand-in scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import replace

import pytest
from gateway_standin import StandinScheduler

from orca.demo_model import write_demo_model
from orca.embedded_redis import free_port
from orca_gateway.config import GatewayConfig
from orca_gateway.server import GatewayServer
from orca_gateway.tokenizer import Tokenizer

MODEL_NAME = "demo-model"


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory):
    """The demo checkpoint (tokenizer with a chat template), written once per session."""
    return write_demo_model(tmp_path_factory.mktemp("gateway") / MODEL_NAME)


@pytest.fixture(scope="session")
def tokenizer(demo_model_dir):
    """The demo model's Tokenizer, as the gateway loads it."""
    return Tokenizer.load(demo_model_dir)


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


@pytest.fixture(scope="session")
def gateway(demo_model_dir, redis_server):
    """One gateway for the session (tests flush Redis under it; it does not mind)."""
    with running_gateway(gateway_config(demo_model_dir, redis_server.url)) as server:
        yield server


@pytest.fixture
def base_url(gateway):
    """The gateway's OpenAI base URL."""
    return f"http://127.0.0.1:{gateway.http_port}/v1"


@pytest.fixture
def standin(redis_url):
    """A stand-in scheduler on a freshly flushed Redis."""
    scheduler = StandinScheduler(redis_url, model=MODEL_NAME).start()
    try:
        yield scheduler
    finally:
        scheduler.stop()


@pytest.fixture
def client(base_url):
    """The real (sync) openai client, pointed at the gateway."""
    import openai

    with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=30) as c:
        yield c
