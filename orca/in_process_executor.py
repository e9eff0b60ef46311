"""An Executor that runs the worker's ModelRunner inside the calling process."""

from __future__ import annotations

from orca_proto.v1 import worker_pb2
from orca_worker.runner import ModelRunner, RunnerConfig


class InProcessExecutor:
    """The in-process implementation of `orca_scheduler.executor.Executor`."""

    def __init__(self, config: RunnerConfig) -> None:
        self.runner = ModelRunner(config)

    async def submit(self, plan: worker_pb2.StepPlan) -> worker_pb2.StepResult:
        """Run one plan to completion on this process's device."""
        return self.runner.execute(plan)

    def execute(self, plan: worker_pb2.StepPlan) -> worker_pb2.StepResult:
        """`submit`, for callers with no event loop (LLM.step)."""
        return self.runner.execute(plan)

    def info(self) -> worker_pb2.WorkerInfo:
        """The runner's WorkerInfo (model, KV pool, max length, EOS ids)."""
        return self.runner.info()
