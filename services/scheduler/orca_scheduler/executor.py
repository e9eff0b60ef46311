"""The one interface through which a scheduler drives a pipeline of workers.

Two implementations: the in-process executor (`orca.in_process_executor`, used by `orca.LLM`
and most tests) and the scheduler service's `PipelineExecutor` (gRPC, every worker of one
pipeline). Same plans, same results.
"""

from __future__ import annotations

from typing import Protocol

from orca_proto.v1 import worker_pb2


class Executor(Protocol):
    """Runs StepPlans on one pipeline and returns the last stage's StepResults."""

    async def submit(self, plan: worker_pb2.StepPlan) -> worker_pb2.StepResult:
        """Run one plan and return its result. Plans are executed in the order `submit` was
        called (started, for tasks), and a pipeline of pp stages takes up to pp at once:
        `submit` may be called again before an earlier one has returned."""
        ...

    def info(self) -> worker_pb2.WorkerInfo:
        """What the pipeline serves: model, KV pool shape, max length, EOS ids."""
        ...
