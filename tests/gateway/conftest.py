"""Fixtures of the gateway tests: the demo tokenizer, a real gateway (HTTP + gRPC in a
background thread) on real Redis, and the stand-in scheduler."""

from __future__ import annotations

import pytest
from gateway_harness import MODEL_NAME, gateway_config, running_gateway  # noqa: F401
from gateway_standin import StandinScheduler

from orca.demo_model import write_demo_model
from orca_gateway.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory):
    """The demo checkpoint (tokenizer with a chat template), written once per session."""
    return write_demo_model(tmp_path_factory.mktemp("gateway") / MODEL_NAME)


@pytest.fixture(scope="session")
def tokenizer(demo_model_dir):
    """The demo model's Tokenizer, as the gateway loads it."""
    return Tokenizer.load(demo_model_dir)


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
