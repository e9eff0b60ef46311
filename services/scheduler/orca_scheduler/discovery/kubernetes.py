"""Ready worker pods, from a list/watch of the Kubernetes API.

The workers are a StatefulSet: pod `orca-worker-7` is ordinal 7 (the name's numeric suffix),
its address is `<pod IP>:<worker port>`. A pod counts as ready when its `Ready` condition is
True, it has an IP and it is not being deleted; DELETED, NotReady or terminating removes it.

Protocol: list the pods (label selector, namespace), then watch from the list's
resourceVersion (with bookmarks, so that the version stays fresh). A watch the server ends
is resumed from the last version seen; `410 Gone` (the version is too old), an ERROR event
or a broken connection lists again (with a backoff after errors), so that changes missed
meanwhile are not lost. While the API cannot be reached the last known set stands: serving
pipelines keep serving (a dead worker breaks its stream anyway).

RBAC: the scheduler's ServiceAccount needs `get`, `list` and `watch` on `pods` in the
workers' namespace, e.g. a Role with
    rules: [{apiGroups: [""], resources: ["pods"], verbs: ["get", "list", "watch"]}]
bound to it by a RoleBinding. In-cluster, `main()` reads the API address from
KUBERNETES_SERVICE_HOST / KUBERNETES_SERVICE_PORT and authenticates with the
ServiceAccount's token and CA (/var/run/secrets/kubernetes.io/serviceaccount/).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote

from orca_scheduler.discovery.base import ReadyWorkers
from orca_scheduler.discovery.kube_api import KubeApi, KubeApiError, ResourceExpiredError

log = logging.getLogger(__name__)

_ORDINAL = re.compile(r"-(\d+)$")


def pod_ordinal(name: str) -> int | None:
    """A StatefulSet pod's ordinal from its name (`orca-worker-7` -> 7), or None."""
    match = _ORDINAL.search(name)
    return int(match.group(1)) if match else None


def pod_is_ready(pod: dict) -> bool:
    """Ready=True, has an IP, and is not being deleted."""
    metadata, status = pod.get("metadata") or {}, pod.get("status") or {}
    if metadata.get("deletionTimestamp") or not status.get("podIP"):
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def ready_workers(pods: dict[str, dict], worker_port: int) -> ReadyWorkers:
    """ordinal -> host:port of the ready pods (pods without an ordinal are skipped)."""
    ready: ReadyWorkers = {}
    for name, pod in pods.items():
        ordinal = pod_ordinal(name)
        if ordinal is None or not pod_is_ready(pod):
            continue
        ip = pod["status"]["podIP"]
        ready[ordinal] = f"[{ip}]:{worker_port}" if ":" in ip else f"{ip}:{worker_port}"
    return ready


class KubernetesDiscovery:
    """Watches the pods matching `label_selector` in `namespace`."""

    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        label_selector: str,
        worker_port: int,
        watch_timeout_s: int = 240,
        max_backoff_s: float = 10.0,
    ) -> None:
        self._api = api
        self._path = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods"
        self._selector = label_selector
        self._worker_port = worker_port
        self._watch_timeout_s = watch_timeout_s
        self._max_backoff_s = max_backoff_s
        self.num_lists = 0  # for tests and logs: how often the pods were listed

    async def updates(self) -> AsyncIterator[ReadyWorkers]:
        """Yield the ready workers after the first list and whenever they change."""
        last: ReadyWorkers | None = None
        async for pods in self._pod_states():
            ready = ready_workers(pods, self._worker_port)
            if ready != last:
                log.info(
                    "workers_discovered ready=%s",
                    ",".join(f"{o}={a}" for o, a in sorted(ready.items())) or "none",
                )
                last = ready
                yield dict(ready)

    async def _pod_states(self) -> AsyncIterator[dict[str, dict]]:
        """Every pod by name, after each list and each watch event."""
        backoff_s = 0.0
        while True:
            if backoff_s:
                await asyncio.sleep(backoff_s)
            try:
                state = await self._list()
                yield state.pods
                backoff_s = 0.0
                while True:  # watch, and resume the watch where the server ended it
                    started = time.monotonic()
                    async for pods in self._watch(state):
                        yield pods
                    if time.monotonic() - started < 1.0:
                        await asyncio.sleep(1.0)  # a server that ends watches at once
            except ResourceExpiredError as exc:
                log.info("pod_watch_expired error=%r (listing again)", str(exc))
            except (
                KubeApiError,
                OSError,
                TimeoutError,
                ValueError,
                asyncio.IncompleteReadError,
            ) as exc:
                backoff_s = min(max(backoff_s * 2, 0.5), self._max_backoff_s)
                log.warning("pod_watch_failed error=%r backoff_s=%.1f", str(exc), backoff_s)

    async def _list(self) -> _PodState:
        body = await self._api.get_json(self._path, {"labelSelector": self._selector})
        self.num_lists += 1
        pods = {p["metadata"]["name"]: p for p in body.get("items") or []}
        return _PodState(pods, (body.get("metadata") or {}).get("resourceVersion", ""))

    async def _watch(self, state: _PodState) -> AsyncIterator[dict[str, dict]]:
        """Apply one watch's events to `state`; yields the pods after each change."""
        params = {
            "labelSelector": self._selector,
            "watch": "1",
            "resourceVersion": state.version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self._watch_timeout_s),
        }
        idle_timeout_s = self._watch_timeout_s + 30.0
        async for event in self._api.watch(self._path, params, idle_timeout_s):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                code = obj.get("code", 0)
                error = ResourceExpiredError if code == 410 else KubeApiError
                raise error(code, obj.get("message", "watch error"))
            metadata = obj.get("metadata") or {}
            state.version = metadata.get("resourceVersion", state.version)
            name = metadata.get("name")
            if kind == "BOOKMARK" or not name:
                continue
            if kind == "DELETED":
                state.pods.pop(name, None)
            elif kind in ("ADDED", "MODIFIED"):
                state.pods[name] = obj
            yield state.pods


@dataclass
class _PodState:
    """The pods as last seen, and the resourceVersion they are current at."""

    pods: dict[str, dict]
    version: str
