"""A local HTTP server that speaks the Kubernetes list/watch protocol for the pods of one
namespace, fed with pod changes by the test.

- `GET /api/v1/namespaces/NS/pods?labelSelector=S`: a PodList with its resourceVersion
  (only pods are served, and only to the expected selector; anything else is a 404).
- `...&watch=1&resourceVersion=RV`: a chunked stream of newline-delimited events
  (ADDED / MODIFIED / DELETED, BOOKMARK) after RV, until `timeoutSeconds`, `end_watches()`
  or `expire()`; a version older than the expiry gets an ERROR event with a 410 Status,
  as the API server sends once its event history is compacted.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def pod(name: str, ip: str = "", ready: bool = False, deleting: bool = False) -> dict:
    """A pod object as the API returns it (the fields discovery reads)."""
    metadata: dict = {"name": name, "labels": {"app.kubernetes.io/component": "worker"}}
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict = {
        "phase": "Running" if ip else "Pending",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if ip:
        status["podIP"] = ip
    return {"kind": "Pod", "apiVersion": "v1", "metadata": metadata, "status": status}


class FakeKubeApi:
    """Pods of `namespace` matching `selector`, with a history of events to watch."""

    def __init__(self, namespace: str = "orca", selector: str = "app=orca-worker") -> None:
        self.namespace = namespace
        self.selector = selector
        self.requests: list[str] = []  # "list" or "watch@RV", in order
        self.fail_next_lists = 0  # answer this many lists with a 500
        self._pods: dict[str, dict] = {}
        self._events: list[tuple[int, str, dict]] = []  # (version, type, object)
        self._version = 100
        self._expired_before = 0
        self._watch_epoch = 0  # bumped to end the open watches
        self._cond = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The API's base URL."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeKubeApi:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.end_watches()
        self._server.shutdown()
        self._server.server_close()

    # ---- the test's side -----------------------------------------------------------------

    def set_pod(self, name: str, ip: str = "", ready: bool = False, deleting: bool = False):
        """Add or change a pod (an ADDED or MODIFIED event)."""
        with self._cond:
            kind = "MODIFIED" if name in self._pods else "ADDED"
            self._record(kind, pod(name, ip, ready, deleting))

    def delete_pod(self, name: str) -> None:
        """Remove a pod (a DELETED event)."""
        with self._cond:
            self._record("DELETED", self._pods[name])

    def bookmark(self) -> None:
        """A BOOKMARK event: only a newer resourceVersion."""
        with self._cond:
            self._version += 1
            self._events.append((self._version, "BOOKMARK", {"kind": "Pod", "metadata": {}}))
            self._cond.notify_all()

    def expire(self) -> None:
        """Compact the history: a watch from any version seen so far (the open ones too)
        gets 410 Gone; a list gives a version to watch from again."""
        with self._cond:
            self._version += 1
            self._expired_before = self._version
            self._cond.notify_all()

    def end_watches(self) -> None:
        """End the open watches cleanly (as their timeoutSeconds would)."""
        with self._cond:
            self._watch_epoch += 1
            self._cond.notify_all()

    def _record(self, kind: str, obj: dict) -> None:
        self._version += 1
        obj = json.loads(json.dumps(obj))
        obj["metadata"]["resourceVersion"] = str(self._version)
        if kind == "DELETED":
            del self._pods[obj["metadata"]["name"]]
        else:
            self._pods[obj["metadata"]["name"]] = obj
        self._events.append((self._version, kind, obj))
        self._cond.notify_all()

    # ---- the HTTP side -------------------------------------------------------------------

    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path != f"/api/v1/namespaces/{api.namespace}/pods" or (
                    query.get("labelSelector") != api.selector
                ):
                    self._send_json(404, {"kind": "Status", "code": 404, "message": "not found"})
                elif query.get("watch") in ("1", "true"):
                    self._watch(int(query.get("resourceVersion") or 0), query)
                else:
                    self._list()

            def _list(self) -> None:
                with api._cond:
                    api.requests.append("list")
                    if api.fail_next_lists:
                        api.fail_next_lists -= 1
                        body = {"kind": "Status", "code": 500, "message": "etcd unavailable"}
                        self._send_json(500, body)
                        return
                    body = {
                        "kind": "PodList",
                        "metadata": {"resourceVersion": str(api._version)},
                        "items": list(api._pods.values()),
                    }
                self._send_json(200, body)

            def _watch(self, version: int, query: dict) -> None:
                deadline = time.monotonic() + float(query.get("timeoutSeconds", 60))
                with api._cond:
                    api.requests.append(f"watch@{version}")
                    epoch = api._watch_epoch
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                sent = version
                while True:
                    with api._cond:
                        if sent < api._expired_before:
                            status = {"kind": "Status", "code": 410, "reason": "Expired",
                                      "message": f"too old resource version: {sent}"}  # fmt: skip
                            events = [{"type": "ERROR", "object": status}]
                            done = True
                        else:
                            events = [
                                {"type": kind, "object": obj}
                                for v, kind, obj in api._events
                                if v > sent
                            ]
                            sent = max([sent, *(v for v, _, _ in api._events)])
                            done = api._watch_epoch != epoch or time.monotonic() > deadline
                        if not events and not done:
                            api._cond.wait(timeout=0.05)
                            continue
                    try:
                        for event in events:
                            self._chunk(json.dumps(event).encode() + b"\n")
                        if done:
                            self._chunk(b"")
                            return
                    except OSError:
                        return

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _send_json(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
