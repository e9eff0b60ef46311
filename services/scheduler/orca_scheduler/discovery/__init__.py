"""Which workers are up: the set of ready workers (ordinal -> host:port) as it changes.

- `base`: the `Discovery` interface and `StaticDiscovery` (a fixed `--workers` list)
- `kubernetes`: `KubernetesDiscovery`, a list/watch of the worker pods
- `kube_api`: the small HTTP client of the Kubernetes API that it uses
"""

from orca_scheduler.discovery.base import Discovery, ReadyWorkers, StaticDiscovery
from orca_scheduler.discovery.kubernetes import KubernetesDiscovery

__all__ = ["Discovery", "KubernetesDiscovery", "ReadyWorkers", "StaticDiscovery"]
