"""`orca-scheduler`: the iteration-level scheduler as a service.

Once connected to Redis and the expected pipelines of workers it prints one line to stdout,
`orca-scheduler ready workers=HOST:PORT,... model=NAME pipelines=N`, for launchers to wait
on. SIGTERM or SIGINT drains: no new requests are read, the ones taken finish, then it
exits 0; a second signal stops at once (unfinished requests stay pending in Redis and a
restarted scheduler resumes them). It exits 1 when it cannot start (with a static list of
workers: no pipeline answers within the connect timeout). A pipeline lost while serving
has its requests recomputed on the others; with none left they wait for one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence

from redis.exceptions import RedisError

from orca_proto.tracing import configure_tracing
from orca_scheduler.config import SchedulerServiceConfig, parse_config
from orca_scheduler.discovery.base import Discovery, StaticDiscovery
from orca_scheduler.discovery.kube_api import KubeApi, KubeApiConfig
from orca_scheduler.discovery.kubernetes import KubernetesDiscovery
from orca_scheduler.grpc_executor import WorkerUnavailableError
from orca_scheduler.service import SchedulerService

log = logging.getLogger("orca_scheduler")


# Where a pod finds its service account's token, CA and namespace.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `orca-scheduler`; returns the process exit code."""
    config = parse_config(argv, os.environ)
    logging.basicConfig(
        level=config.log_level,
        stream=sys.stderr,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    try:
        configure_tracing("orca-scheduler")
        discovery = build_discovery(config, os.environ)
    except (ValueError, OSError) as exc:
        log.error("startup_failed error=%r", str(exc))
        return 1
    return asyncio.run(serve(config, discovery))


def build_discovery(
    config: SchedulerServiceConfig,
    env: Mapping[str, str],
    service_account_dir: str = SERVICE_ACCOUNT_DIR,
) -> Discovery:
    """The Discovery the config asks for. In-cluster Kubernetes: the API from
    KUBERNETES_SERVICE_HOST/PORT in `env`, the service account's token (re-read per request,
    it rotates) and CA; the namespace defaults to the pod's own."""
    if config.discovery == "static":
        return StaticDiscovery(config.workers)
    if config.k8s_api_url:
        api = KubeApi(KubeApiConfig(config.k8s_api_url))
    else:
        host = env.get("KUBERNETES_SERVICE_HOST", "")
        if not host:
            raise ValueError(
                "--discovery kubernetes outside a cluster (no KUBERNETES_SERVICE_HOST): "
                "give --k8s-api-url"
            )
        port = env.get("KUBERNETES_SERVICE_PORT", "443")
        host = f"[{host}]" if ":" in host else host
        api = KubeApi(
            KubeApiConfig(
                f"https://{host}:{port}",
                token_file=os.path.join(service_account_dir, "token"),
                ca_file=os.path.join(service_account_dir, "ca.crt"),
            )
        )
    namespace = config.k8s_namespace
    if not namespace:
        namespace_file = os.path.join(service_account_dir, "namespace")
        if os.path.exists(namespace_file):
            with open(namespace_file) as f:
                namespace = f.read().strip()
    return KubernetesDiscovery(
        api, namespace or "default", config.k8s_label_selector, config.k8s_worker_port
    )


async def serve(config: SchedulerServiceConfig, discovery: Discovery | None = None) -> int:
    """Start the service, print the ready line, serve until a signal; returns the exit code."""
    service = SchedulerService(config, discovery)
    signals: asyncio.Queue[int] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signals.put_nowait, sig)

    start = asyncio.create_task(service.start())
    next_signal = asyncio.create_task(signals.get())
    await asyncio.wait({start, next_signal}, return_when=asyncio.FIRST_COMPLETED)
    if not start.done():  # a signal before we were ready: just leave
        start.cancel()
        await asyncio.gather(start, return_exceptions=True)
        await service.close()
        return 0
    try:
        num_pipelines = start.result()
    except (WorkerUnavailableError, RedisError, ConnectionError, OSError, ValueError) as exc:
        log.error("startup_failed error=%r", str(exc))
        next_signal.cancel()
        await service.close()
        return 1
    workers = ",".join(config.workers) if config.discovery == "static" else "kubernetes"
    print(
        f"orca-scheduler ready workers={workers} model={service.model_name} "
        f"pipelines={num_pipelines}",
        flush=True,
    )
    run = asyncio.create_task(service.run())
    signal_count = 0
    while not run.done():
        if next_signal.done():
            signal_count += 1
            if signal_count == 1:
                service.drain()
            else:
                service.stop_now()
            next_signal = asyncio.create_task(signals.get())
        await asyncio.wait({run, next_signal}, return_when=asyncio.FIRST_COMPLETED)
    next_signal.cancel()
    return run.result()


if __name__ == "__main__":
    sys.exit(main())
