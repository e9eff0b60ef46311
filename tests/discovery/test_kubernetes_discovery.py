"""KubernetesDiscovery against a local server that speaks the Kubernetes list/watch protocol,
replaying pod changes: added, ready, terminating, deleted; a watch the server ends (resumed
from the last version), 410 Gone (listed again) and API errors (retried); and the pod
helpers and the static list."""

from __future__ import annotations

import asyncio

import pytest
from fake_kube_api import FakeKubeApi, pod

from orca_scheduler.discovery import KubernetesDiscovery, StaticDiscovery
from orca_scheduler.discovery.kube_api import KubeApi, KubeApiConfig, KubeApiError
from orca_scheduler.discovery.kubernetes import pod_is_ready, pod_ordinal, ready_workers

PORT = 7000


@pytest.fixture
def api():
    server = FakeKubeApi(namespace="orca", selector="app=orca-worker").start()
    try:
        yield server
    finally:
        server.stop()


def test_pod_helpers():
    assert [pod_ordinal(n) for n in ("orca-worker-7", "w-12", "orca-worker", "x-1a")] == [
        7,
        12,
        None,
        None,
    ]
    assert pod_is_ready(pod("w-0", "10.0.0.1", ready=True))
    assert not pod_is_ready(pod("w-0", "10.0.0.1", ready=False))
    assert not pod_is_ready(pod("w-0", "", ready=True))  # no IP yet
    assert not pod_is_ready(pod("w-0", "10.0.0.1", ready=True, deleting=True))
    pods = {
        "w-0": pod("w-0", "10.0.0.1", ready=True),
        "w-1": pod("w-1", "fd00::1", ready=True),
        "w-x": pod("w-x", "10.0.0.3", ready=True),
    }
    assert ready_workers(pods, PORT) == {0: "10.0.0.1:7000", 1: "[fd00::1]:7000"}


def test_static_discovery_yields_the_list_once():
    async def scenario():
        updates = StaticDiscovery(["a:1", "b:2"]).updates()
        assert await anext(updates) == {0: "a:1", 1: "b:2"}
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(updates), 0.1)

    asyncio.run(scenario())


def test_watch_replays_pod_changes(api):
    api.set_pod("orca-worker-0", "10.0.0.1", ready=True)
    api.set_pod("orca-worker-1", "10.0.0.2", ready=False)
    api.set_pod("orca-worker-abc", "10.0.0.9", ready=True)  # no ordinal: never a worker
    api.set_pod("orca-worker-3")  # pending: no IP

    async def scenario():
        discovery = KubernetesDiscovery(
            KubeApi(KubeApiConfig(api.url)), "orca", "app=orca-worker", PORT, max_backoff_s=1.0
        )
        updates = discovery.updates()

        async def next_ready():
            return await asyncio.wait_for(anext(updates), 10)

        assert await next_ready() == {0: "10.0.0.1:7000"}
        api.set_pod("orca-worker-1", "10.0.0.2", ready=True)  # becomes ready
        assert await next_ready() == {0: "10.0.0.1:7000", 1: "10.0.0.2:7000"}
        api.set_pod("orca-worker-2", "fd00::5", ready=False)  # no change: not yielded
        api.bookmark()
        api.set_pod("orca-worker-2", "fd00::5", ready=True)
        assert await next_ready() == {0: "10.0.0.1:7000", 1: "10.0.0.2:7000", 2: "[fd00::5]:7000"}
        api.set_pod("orca-worker-1", "10.0.0.2", ready=True, deleting=True)  # terminating
        assert await next_ready() == {0: "10.0.0.1:7000", 2: "[fd00::5]:7000"}
        api.delete_pod("orca-worker-1")  # gone already: no change
        api.set_pod("orca-worker-0", "10.0.0.1", ready=False)  # NotReady
        assert await next_ready() == {2: "[fd00::5]:7000"}

        # The server ends the watch (its timeout): watched again from the last version.
        api.end_watches()
        await asyncio.sleep(0.2)
        api.set_pod("orca-worker-0", "10.0.0.7", ready=True)  # restarted with a new IP
        assert await next_ready() == {0: "10.0.0.7:7000", 2: "[fd00::5]:7000"}
        assert api.requests.count("list") == 1
        watches = [int(r.split("@")[1]) for r in api.requests if r.startswith("watch@")]
        assert len(watches) == 2 and watches[1] > watches[0]

        # 410 Gone while changes happen: listed again, nothing missed.
        api.expire()
        api.set_pod("orca-worker-4", "10.0.0.5", ready=True)
        api.delete_pod("orca-worker-2")
        want = {0: "10.0.0.7:7000", 4: "10.0.0.5:7000"}
        got = await next_ready()
        while got != want:  # (events may also arrive one by one after the list)
            got = await next_ready()
        assert api.requests.count("list") == 2

        # The API fails for a while: the last set stands, then a re-list catches up.
        api.fail_next_lists = 2
        api.expire()
        api.delete_pod("orca-worker-4")
        assert await next_ready() == {0: "10.0.0.7:7000"}
        assert api.requests.count("list") == 5
        assert discovery.num_lists == 3
        await updates.aclose()

    asyncio.run(scenario())


def test_kube_api_reports_errors(api):
    async def scenario():
        client = KubeApi(KubeApiConfig(api.url))
        with pytest.raises(KubeApiError) as error:
            await client.get_json("/api/v1/namespaces/other/pods", {"labelSelector": "x"})
        assert error.value.status == 404 and "not found" in str(error.value)
        listing = await client.get_json(
            "/api/v1/namespaces/orca/pods", {"labelSelector": "app=orca-worker"}
        )
        assert listing["kind"] == "PodList" and listing["items"] == []

    asyncio.run(scenario())
    with pytest.raises(ValueError):
        KubeApi(KubeApiConfig("ftp://somewhere"))
