"""The benchmark trace: `orca.workload`'s, re-exported for the bench scripts."""

from orca.workload import TraceRequest, poisson_arrivals, trace, trace_stats

__all__ = ["TraceRequest", "poisson_arrivals", "trace", "trace_stats"]
