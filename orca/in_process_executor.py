"""Runs StepPlans on the worker's ModelRunner inside the calling process (orca.LLM's worker)."""

from __future__ import annotations

import time

from orca.step_stats import StepStats
from orca_proto.v1 import worker_pb2
from orca_worker.runner import ModelRunner, RunnerConfig


class InProcessExecutor:
    """The in-process counterpart of a gRPC worker: one ModelRunner, plans run on call."""

    def __init__(self, config: RunnerConfig) -> None:
        self.runner = ModelRunner(config)
        self.stats = StepStats()  # read by benchmarks; costs two clock reads a step

    def execute(self, plan: worker_pb2.StepPlan) -> worker_pb2.StepResult:
        """Run one plan to completion on this process's device."""
        start = time.perf_counter()
        result = self.runner.execute(plan)
        self.stats.record((time.perf_counter() - start) * 1e3, result)
        return result

    def info(self) -> worker_pb2.WorkerInfo:
        """The runner's WorkerInfo (model, KV pool, max length, EOS ids)."""
        return self.runner.info()
