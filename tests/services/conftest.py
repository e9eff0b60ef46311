"""Fixtures of the service tests: a real `orca-worker` process on a tiny Llama, real
`orca-scheduler` processes, the session's Redis, and the offline engine as the reference."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from tiny_models import make_tiny_checkpoint  # tests/ is on pytest's pythonpath

from orca.embedded_redis import free_port
from orca_proto import redis_streams as rs
from orca_proto.v1 import stream_pb2, worker_pb2

NUM_KV_BLOCKS = 64
BLOCK_SIZE = 16
TIMEOUT_S = 30.0


class ServiceProcess:
    """A service child process whose stdout is read line by line in the background."""

    def __init__(self, name: str, args: list[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            [sys.executable, *args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for_line(self, prefix: str, timeout_s: float = TIMEOUT_S) -> str:
        """The first stdout line starting with `prefix`; fails with the log tail otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            if line.startswith(prefix):
                return line
        raise AssertionError(f"{self.name} never printed {prefix!r}; log:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        """The last lines of the process's stderr log."""
        self._log.flush()
        return "\n".join(self.log_path.read_text().splitlines()[-n:])

    def signal(self, sig: int) -> None:
        """Send a signal to the process."""
        self.process.send_signal(sig)

    def wait(self, timeout_s: float = TIMEOUT_S) -> int:
        """Wait for the process to exit; returns its exit code."""
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def start_worker(
    model: Path, log_path: Path, *extra: str, port: int | None = None
) -> tuple[ServiceProcess, str]:
    """A running `orca-worker` process and its address (on `port`, default a free one)."""
    port = port or free_port()
    proc = ServiceProcess(
        "worker",
        ["-m", "orca_worker.main", "--model", str(model), "--port", str(port),
         "--num-kv-blocks", str(NUM_KV_BLOCKS), "--block-size", str(BLOCK_SIZE), *extra],
        log_path,
    )  # fmt: skip
    try:
        line = proc.wait_for_line("orca-worker listening", timeout_s=60)
    except BaseException:
        proc.stop()
        raise
    assert line == (
        f"orca-worker listening 127.0.0.1:{port} model={model.name} kv_blocks={NUM_KV_BLOCKS}"
    )
    return proc, f"127.0.0.1:{port}"


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A tiny random Llama checkpoint (vocab 384, max_model_len 512, EOS 2)."""
    return make_tiny_checkpoint("llama", tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def worker_address(tiny_llama, tmp_path_factory):
    """host:port of one `orca-worker` process shared by the session (a new scheduler's
    stream makes it drop what an earlier scheduler left)."""
    proc, address = start_worker(tiny_llama, tmp_path_factory.mktemp("worker") / "worker.log")
    try:
        yield address
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def reference_llm(tiny_llama):
    """The offline engine on the same checkpoint: what the services must reproduce."""
    from orca import LLM

    return LLM(model=str(tiny_llama), num_kv_blocks=NUM_KV_BLOCKS, block_size=BLOCK_SIZE)


class Harness:
    """Starts schedulers against one Redis and writes / reads the Redis streams."""

    def __init__(self, redis_url: str, worker_address: str, log_dir: Path) -> None:
        self.redis_url = redis_url
        self.worker_address = worker_address
        self.redis = redis.Redis.from_url(redis_url)
        self._log_dir = log_dir
        self._processes: list[ServiceProcess] = []

    def start_worker(
        self, model: Path, *extra: str, port: int | None = None
    ) -> tuple[ServiceProcess, str]:
        """A dedicated `orca-worker` process (stopped at teardown) and its address."""
        proc, address = start_worker(
            model, self._log_dir / f"worker-{len(self._processes)}.log", *extra, port=port
        )
        self._processes.append(proc)
        return proc, address

    def start_scheduler(self, *extra: str, worker_address: str | None = None) -> ServiceProcess:
        """A ready `orca-scheduler` process (stopped at teardown); `worker_address` may be a
        comma-separated list of workers."""
        n = len(self._processes)
        proc = ServiceProcess(
            f"scheduler-{n}",
            ["-m", "orca_scheduler.main", "--redis-url", self.redis_url,
             "--workers", worker_address or self.worker_address, "--connect-timeout-s", "20",
             *extra],
            self._log_dir / f"scheduler-{n}.log",
        )  # fmt: skip
        self._processes.append(proc)
        proc.wait_for_line("orca-scheduler ready")
        return proc

    def submit(
        self,
        request_id: str,
        prompt: list[int],
        max_tokens: int,
        ignore_eos: bool = False,
        **sampling,
    ) -> None:
        """XADD one StreamRequest to `orca:requests`."""
        request = stream_pb2.StreamRequest(
            request_id=request_id,
            prompt_token_ids=prompt,
            sampling=worker_pb2.SamplingParams(**sampling),
            max_tokens=max_tokens,
            ignore_eos=ignore_eos,
            arrival_time_unix=time.time(),
        )
        self.redis.xadd(rs.REQUESTS_STREAM, rs.encode(request))

    def control(self, request_id: str, kind=stream_pb2.Control.CANCEL) -> None:
        """XADD a Control to `orca:control`."""
        control = stream_pb2.Control(request_id=request_id, kind=kind)
        self.redis.xadd(rs.CONTROL_STREAM, rs.encode(control))

    def chunks(self, request_id: str) -> list[stream_pb2.TokenChunk]:
        """Every chunk in the request's output stream so far."""
        entries = self.redis.xrange(rs.output_stream(request_id))
        return [rs.decode_chunk(fields) for _, fields in entries]

    def wait_for_chunks(
        self,
        request_id: str,
        until: Callable[[list[stream_pb2.TokenChunk]], bool] | None = None,
        timeout_s: float = TIMEOUT_S,
    ) -> list[stream_pb2.TokenChunk]:
        """Chunks of the request once `until(chunks)` holds (default: the final one is in)."""
        until = until or (lambda chunks: bool(chunks) and chunks[-1].finished)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            chunks = self.chunks(request_id)
            if until(chunks):
                return chunks
            time.sleep(0.01)
        raise AssertionError(f"{request_id}: condition not met in {timeout_s}s: {chunks}")

    @staticmethod
    def eventually(condition: Callable[[], object], timeout_s: float = 10.0) -> None:
        """Wait until `condition()` is true; AssertionError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition still false after {timeout_s}s")
            time.sleep(0.01)

    @staticmethod
    def tokens(chunks: list[stream_pb2.TokenChunk]) -> list[int]:
        """The output tokens, placed by index (each index must appear exactly once)."""
        return tokens_of(chunks)

    def pending(self) -> int:
        """Entries of `orca:requests` delivered but not acknowledged."""
        return self.redis.xpending(rs.REQUESTS_STREAM, rs.REQUESTS_GROUP)["pending"]

    def load(self) -> rs.LoadReport:
        """The `orca:load` hash."""
        return rs.LoadReport.from_hash(self.redis.hgetall(rs.LOAD_KEY))

    def close(self) -> None:
        """Stop every scheduler started here."""
        for proc in self._processes:
            proc.stop()
        self.redis.close()


def tokens_of(chunks: list[stream_pb2.TokenChunk]) -> list[int]:
    """The output tokens, placed by index (each index must appear exactly once)."""
    by_index: dict[int, int] = {}
    for chunk in chunks:
        for offset, token in enumerate(chunk.token_ids):
            index = chunk.first_token_index + offset
            assert index not in by_index, f"token index {index} published twice"
            by_index[index] = token
    assert sorted(by_index) == list(range(len(by_index))), "token indexes have a gap"
    return [by_index[i] for i in range(len(by_index))]


@pytest.fixture
def harness(redis_url, worker_address, tmp_path):
    """A Harness on a freshly flushed Redis; its schedulers are stopped afterwards."""
    h = Harness(redis_url, worker_address, tmp_path)
    try:
        yield h
    finally:
        h.close()
