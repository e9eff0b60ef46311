"""Real `orca-worker` processes forming one tp x pp pipeline, and a gRPC client that sends
each plan to every worker over its own long-lived Execute stream (as the scheduler does)."""

from __future__ import annotations

import asyncio
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc

from orca.embedded_redis import free_port
from orca_proto.v1 import worker_pb2 as pb
from orca_proto.v1 import worker_pb2_grpc

START_TIMEOUT_S = 90.0
READ_TIMEOUT_S = 60.0


class WorkerProcess:
    """One `orca-worker` child; stdout lines are collected in the background."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 (closed in stop())
        # One thread per worker: the test machine may have two cores for four workers.
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "orca_worker.main", *args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_ready(self, deadline: float) -> None:
        """Wait for the `orca-worker listening` line; fails with the log tail otherwise."""
        while time.monotonic() < deadline:
            try:
                if self.lines.get(timeout=0.1).startswith("orca-worker listening"):
                    return
            except queue.Empty:
                if self.process.poll() is not None:
                    break
        raise AssertionError(f"worker never became ready; log:\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        """The last lines of the worker's stderr."""
        self._log.flush()
        return "\n".join(self.log_path.read_text().splitlines()[-n:])

    def stop(self) -> None:
        """SIGKILL: the pipeline's peers must not wait for each other's shutdown here."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._log.close()


class Pipeline:
    """pp * tp worker processes of pipeline 0, started with --ordinal; `addresses[i]` is
    worker ordinal i (stage i // tp, TP rank i % tp)."""

    def __init__(self, model: Path, tp: int, pp: int, log_dir: Path, *extra: str) -> None:
        self.tp, self.pp = tp, pp
        init_port = free_port()
        self.addresses: list[str] = []
        self.workers: list[WorkerProcess] = []
        try:
            for ordinal in range(tp * pp):
                port = free_port()
                args = ["--model", str(model), "--port", str(port), "--ordinal", str(ordinal),
                        "--tp", str(tp), "--pp", str(pp),
                        "--dist-init-addr", f"127.0.0.1:{init_port}", *extra]  # fmt: skip
                self.workers.append(WorkerProcess(args, log_dir / f"worker-{ordinal}.log"))
                self.addresses.append(f"127.0.0.1:{port}")
            deadline = time.monotonic() + START_TIMEOUT_S
            for worker in self.workers:
                worker.wait_ready(deadline)
        except BaseException:
            self.stop()
            raise

    @property
    def sampler(self) -> int:
        """Index of the worker that returns tokens (last stage, TP rank 0)."""
        return (self.pp - 1) * self.tp

    def stage_workers(self, stage: int) -> list[int]:
        """Indexes of one stage's workers."""
        return list(range(stage * self.tp, (stage + 1) * self.tp))

    def stop(self) -> None:
        """Kill every worker."""
        for worker in self.workers:
            worker.stop()

    def logs(self) -> str:
        """Every worker's log tail, for a failure message."""
        return "\n".join(f"--- worker {i}\n{w.log_tail()}" for i, w in enumerate(self.workers))


class PipelineClient:
    """One Execute stream per worker (use inside `async with`)."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses

    async def __aenter__(self) -> PipelineClient:
        self.channels = [grpc.aio.insecure_channel(a) for a in self.addresses]
        self.stubs = [worker_pb2_grpc.WorkerStub(c) for c in self.channels]
        self.calls = [stub.Execute() for stub in self.stubs]
        return self

    async def __aexit__(self, *exc) -> None:
        for call in self.calls:
            call.cancel()
        for channel in self.channels:
            await channel.close()

    async def infos(self) -> list[pb.WorkerInfo]:
        """Every worker's Info."""
        return [await stub.Info(pb.InfoRequest(), timeout=10) for stub in self.stubs]

    async def write(self, workers: list[int], plan: pb.StepPlan) -> None:
        """Send `plan` to the given workers' streams."""
        for i in workers:
            await self.calls[i].write(plan)

    async def read(self, worker: int) -> pb.StepResult:
        """The next result of one worker's stream."""
        result = await asyncio.wait_for(self.calls[worker].read(), READ_TIMEOUT_S)
        assert result is not grpc.aio.EOF, f"worker {worker} ended its stream"
        return result

    async def run(self, plan: pb.StepPlan) -> list[pb.StepResult]:
        """Send `plan` to every worker; every worker's result, in worker order."""
        everyone = list(range(len(self.calls)))
        await self.write(everyone, plan)
        return [await self.read(i) for i in everyone]
