"""The scheduler service with `--discovery kubernetes` against a local fake of the API and
stand-in workers (pipelines of 1 stage x 2 ranks, pod i at 127.0.0.(i+1)): a pipeline is
connected once all its pods are Ready, a second one joins with no restart, and deleting a
pod drops its pipeline, whose requests finish on the other one with the right tokens."""

from __future__ import annotations

import re

import pytest
from fake_kube_api import FakeKubeApi
from standin_worker import reference_output, start_pipelines

from orca.embedded_redis import free_port

NAMESPACE, SELECTOR = "orca", "app=orca-worker"


@pytest.fixture
def api():
    server = FakeKubeApi(NAMESPACE, SELECTOR).start()
    try:
        yield server
    finally:
        server.stop()


def test_pipelines_follow_the_worker_pods(harness, api):
    port = free_port()
    hosts = [f"127.0.0.{i + 1}" for i in range(4)]
    # Every stand-in listens on its own IP and the one worker port, as pods do.
    workers = start_pipelines(2, tp=2, hosts=hosts, port=port, step_delay_s=0.01)
    try:
        for i in range(3):
            api.set_pod(f"orca-worker-{i}", hosts[i], ready=True)
        api.set_pod("orca-worker-3", hosts[3], ready=False)
        scheduler = harness.start_scheduler(
            "--discovery", "kubernetes", "--k8s-api-url", api.url,
            "--k8s-namespace", NAMESPACE, "--k8s-label-selector", SELECTOR,
            "--k8s-worker-port", str(port), "--tp", "2",
        )  # fmt: skip
        assert harness.load().num_pipelines == 1  # pipeline 1 lacks a Ready pod

        prompts = [[5 + i, 9, 2 * i + 1, 4] for i in range(6)]
        for i, prompt in enumerate(prompts[:3]):
            harness.submit(f"r{i}", prompt, max_tokens=150)
        api.set_pod("orca-worker-3", hosts[3], ready=True)  # pipeline 1 is complete
        harness.eventually(lambda: harness.load().num_pipelines == 2)
        for i, prompt in enumerate(prompts[3:], start=3):
            harness.submit(f"r{i}", prompt, max_tokens=150)
        for i in range(6):
            harness.wait_for_chunks(f"r{i}", until=lambda chunks: len(chunks) >= 3)
        assert any(r.plan.steps for r in workers[2].received)  # pipeline 1 serves

        api.delete_pod("orca-worker-1")  # pipeline 0 loses a rank
        for i, prompt in enumerate(prompts):
            chunks = harness.wait_for_chunks(f"r{i}", timeout_s=60)
            assert harness.tokens(chunks) == reference_output(prompt, 150), f"r{i}"
        log = scheduler.log_tail(400)
        assert re.search(r"pipeline_lost pipeline=0 reason='a worker of the pipeline", log), log
        assert harness.load().num_pipelines == 1
        for worker in workers:
            assert not worker.violations
    finally:
        for worker in workers:
            worker.die()
