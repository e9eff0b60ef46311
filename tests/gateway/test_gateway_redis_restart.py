"""Redis going away makes the gateway unready (503), never broken; it recovers on its own."""

from __future__ import annotations

import httpx
from gateway_harness import MODEL_NAME, gateway_config, running_gateway
from gateway_standin import StandinScheduler

from orca.embedded_redis import EmbeddedRedis, free_port


def test_gateway_survives_a_redis_restart(demo_model_dir):
    port = free_port()
    body = {"model": MODEL_NAME, "prompt": "still here", "max_tokens": 3}
    redis_server = EmbeddedRedis(port=port).start()
    try:
        config = gateway_config(demo_model_dir, redis_server.url, grpc_port=0)
        with running_gateway(config) as gateway:
            base = f"http://127.0.0.1:{gateway.http_port}"
            standin = StandinScheduler(redis_server.url, model=MODEL_NAME).start()
            assert httpx.post(f"{base}/v1/completions", json=body).status_code == 200
            standin.stop()

            redis_server.stop()
            ready = httpx.get(f"{base}/ready")
            assert ready.status_code == 503 and "Redis is unreachable" in ready.json()["reason"]
            response = httpx.post(f"{base}/v1/completions", json=body, timeout=15)
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "not_ready"
            assert httpx.get(f"{base}/health").status_code == 200
            assert httpx.get(f"{base}/metrics").status_code == 200

            redis_server = EmbeddedRedis(port=port).start()
            standin = StandinScheduler(redis_server.url, model=MODEL_NAME).start()
            try:
                response = httpx.post(f"{base}/v1/completions", json=body, timeout=15)
                assert response.status_code == 200
                assert response.json()["usage"]["completion_tokens"] == 3
            finally:
                standin.stop()
    finally:
        redis_server.stop()
