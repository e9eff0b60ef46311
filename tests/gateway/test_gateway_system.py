"""/v1/models, /health, /ready and /metrics."""

from __future__ import annotations

import re

import httpx
from gateway_harness import MODEL_NAME


def _root(gateway) -> str:
    return f"http://127.0.0.1:{gateway.http_port}"


def test_models(client, standin):
    [model] = client.models.list().data
    assert model.id == MODEL_NAME and model.object == "model" and model.owned_by == "orca"
    assert model.model_extra["max_model_len"] == standin.max_model_len


def test_health_is_always_200(gateway, redis_url):
    response = httpx.get(_root(gateway) + "/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_ready_follows_the_scheduler(gateway, redis_url):
    response = httpx.get(_root(gateway) + "/ready")
    assert response.status_code == 503
    assert "no scheduler" in response.json()["reason"]

    from gateway_standin import StandinScheduler

    standin = StandinScheduler(redis_url, model=MODEL_NAME).start()
    try:
        assert httpx.get(_root(gateway) + "/ready").status_code == 200
        standin.num_pipelines = 0
        standin.publish_load()
        response = httpx.get(_root(gateway) + "/ready")
        assert response.status_code == 503 and "pipeline" in response.json()["reason"]
    finally:
        standin.stop()


def _sample(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}{re.escape(labels)} (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"{name}{labels} not in metrics"
    return float(match.group(1))


def test_metrics(gateway, client, standin):
    before = httpx.get(_root(gateway) + "/metrics").text
    ok_before = (
        _sample(before, "orca_requests_total", '{endpoint="/v1/completions",status="200"}')
        if 'endpoint="/v1/completions",status="200"' in before
        else 0.0
    )
    tokens_before = _sample(before, "orca_generation_tokens_total")
    client.completions.create(model=MODEL_NAME, prompt="count me", max_tokens=4)
    httpx.post(f"{_root(gateway)}/v1/completions", json={"model": "nope", "prompt": "x"})
    standin.num_waiting = 3
    standin.publish_load()

    response = httpx.get(_root(gateway) + "/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    ok = _sample(text, "orca_requests_total", '{endpoint="/v1/completions",status="200"}')
    assert ok == ok_before + 1
    assert _sample(text, "orca_requests_total", '{endpoint="/v1/completions",status="404"}') >= 1
    assert _sample(text, "orca_generation_tokens_total") == tokens_before + 4
    assert _sample(text, "orca_prompt_tokens_total") > 0
    for histogram in (
        "orca_time_to_first_token_seconds",
        "orca_inter_token_latency_seconds",
        "orca_e2e_request_latency_seconds",
    ):
        assert _sample(text, f"{histogram}_count") >= 1
    assert _sample(text, "orca_num_requests_waiting") == 3
    assert _sample(text, "orca_kv_cache_usage_perc") == 0.25
    assert _sample(text, "orca_num_pipelines") == 1
    assert "orca_num_requests_running" in text
