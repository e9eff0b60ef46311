"""`orca serve`: the whole stack on one machine, each service its own real process.

Order: embedded Redis (unless a URL is given) → worker(s) → scheduler → gateway. The
launcher waits for the gateway's /ready, prints where it listens, then watches its children:
Ctrl-C or SIGTERM stops everything (gateway first, Redis last); a child that dies is
reported with the tail of its log and the rest are stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from orca.embedded_redis import EmbeddedRedis, RedisStartError, free_port

LOG_TAIL_CHARS = 3000


class LaunchError(RuntimeError):
    """A service failed to start or died; the message holds its log tail."""


@dataclass
class ServeConfig:
    """Everything `orca serve` needs, built once from its flags."""

    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int = 8001
    device: str = "cpu"
    dtype: str = "auto"
    redis_url: str | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    kv_policy: str = "paged"
    api_key: str | None = None
    served_model_name: str | None = None
    block_size: int = 16
    num_kv_blocks: int | None = None
    load_format: str = "safetensors"
    # The workers' kernels: "auto" (triton on CUDA), "torch" or "triton".
    kernels: str = "auto"
    # Workers replay CUDA graphs for decode steps of up to this many sequences (0: off).
    cuda_graph_max_batch: int = 256
    # Overlapped scheduling in the scheduler (tp = pp = 1 only); None: the scheduler's
    # default (on for single-worker pipelines).
    overlap: bool | None = None
    tp: int = 1
    pp: int = 1
    pipelines: int = 1
    ready_timeout_s: float = 600.0
    log_dir: str | None = None
    extra_worker_args: list[str] = field(default_factory=list)


@dataclass
class _Child:
    name: str
    process: subprocess.Popen
    log_path: Path

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            return ""


class LocalStack:
    """The running stack; `with LocalStack(config) as stack:` starts and stops it."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self._redis: EmbeddedRedis | None = None
        self._children: list[_Child] = []
        self._log_dir = Path(config.log_dir or tempfile.mkdtemp(prefix="orca-serve-"))
        self._log_dir.mkdir(parents=True, exist_ok=True)
        self.redis_url = config.redis_url or ""
        self.scheduler_metrics_port = 0

    @property
    def base_url(self) -> str:
        """The gateway's OpenAI base URL (…/v1)."""
        return f"http://{self._client_host}:{self.config.port}/v1"

    @property
    def grpc_target(self) -> str:
        """host:port of the gateway's gRPC Generate API."""
        return f"{self._client_host}:{self.config.grpc_port}"

    @property
    def log_dir(self) -> Path:
        """Folder with one log file per service."""
        return self._log_dir

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.config.host in ("0.0.0.0", "::", "") else self.config.host

    def start(self) -> LocalStack:
        """Start every service and wait until the gateway is ready; LaunchError on failure.

        The ports of the workers, their rendezvous and the scheduler's metrics are picked
        free here, but another process may take one before the service binds it: a service
        that dies of that is started again, with all the internal ports picked anew."""
        cfg = self.config
        try:
            if not cfg.redis_url:
                self._redis = EmbeddedRedis().start()
                self.redis_url = self._redis.url
            for attempt in range(1, PORT_RACE_ATTEMPTS + 1):
                try:
                    self._start_services()
                    return self
                except LaunchError:
                    if attempt == PORT_RACE_ATTEMPTS or not self._lost_a_port_race():
                        raise
                    self._stop_services()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_services(self) -> None:
        worker_addresses = self._start_workers()
        self.scheduler_metrics_port = free_port()
        self._spawn("scheduler", "orca_scheduler.main", self._scheduler_args(worker_addresses))
        self._spawn("gateway", "orca_gateway.main", self._gateway_args())
        self._wait_ready()

    def _lost_a_port_race(self) -> bool:
        """Whether a worker or the scheduler (whose ports this launcher picked) died because
        its port was taken meanwhile."""
        return any(
            child.name != "gateway"
            and child.process.poll() is not None
            and any(sign in child.log_tail() for sign in _PORT_TAKEN)
            for child in self._children
        )

    def _stop_services(self) -> None:
        for child in reversed(self._children):
            _terminate(child.process)
        self._children.clear()

    def _start_workers(self) -> list[str]:
        """Start pipelines × pp × tp workers; returns their addresses in ordinal order."""
        cfg = self.config
        num_workers = cfg.pipelines * cfg.pp * cfg.tp
        ports = [free_port() for _ in range(num_workers)]
        # One rendezvous address per pipeline: each pipeline is its own process group.
        rendezvous = [free_port() for _ in range(cfg.pipelines)]
        gpus = _visible_gpus(num_workers) if cfg.device.startswith("cuda") else None
        for ordinal, port in enumerate(ports):
            args = self._worker_args(port)
            env = {}
            if num_workers > 1:
                pipeline = ordinal // (cfg.pp * cfg.tp)
                args += ["--ordinal", str(ordinal), "--tp", str(cfg.tp), "--pp", str(cfg.pp),
                         "--dist-init-addr", f"127.0.0.1:{rendezvous[pipeline]}"]  # fmt: skip
                if gpus is not None:
                    env["CUDA_VISIBLE_DEVICES"] = gpus[ordinal % len(gpus)]
            self._spawn(
                f"worker-{ordinal}" if num_workers > 1 else "worker", "orca_worker.main", args, env
            )
        return [f"127.0.0.1:{port}" for port in ports]

    def _worker_args(self, port: int) -> list[str]:
        cfg = self.config
        args = ["--model", cfg.model, "--host", "127.0.0.1", "--port", str(port),
                "--device", cfg.device, "--dtype", cfg.dtype, "--block-size", str(cfg.block_size),
                "--load-format", cfg.load_format, "--kernels", cfg.kernels,
                "--cuda-graph-max-batch", str(cfg.cuda_graph_max_batch)]  # fmt: skip
        if cfg.num_kv_blocks is not None:
            args += ["--num-kv-blocks", str(cfg.num_kv_blocks)]
        return args + cfg.extra_worker_args

    def _scheduler_args(self, worker_addresses: list[str]) -> list[str]:
        cfg = self.config
        args = ["--redis-url", self.redis_url, "--workers", ",".join(worker_addresses),
                "--max-num-seqs", str(cfg.max_num_seqs),
                "--max-num-batched-tokens", str(cfg.max_num_batched_tokens),
                "--kv-policy", cfg.kv_policy, "--metrics-port", str(self.scheduler_metrics_port),
                # A stable name: a restarted scheduler resumes its own pending requests at once.
                "--consumer-name", "orca-scheduler-0"]  # fmt: skip
        if cfg.served_model_name:
            args += ["--served-model-name", cfg.served_model_name]
        if cfg.overlap is not None:
            args.append("--overlap" if cfg.overlap else "--no-overlap")
        if len(worker_addresses) > 1:
            args += ["--tp", str(cfg.tp), "--pp", str(cfg.pp), "--pipelines", str(cfg.pipelines)]
        return args

    def _gateway_args(self) -> list[str]:
        cfg = self.config
        args = ["--model", cfg.model, "--redis-url", self.redis_url, "--host", cfg.host,
                "--port", str(cfg.port), "--grpc-port", str(cfg.grpc_port)]  # fmt: skip
        if cfg.api_key:
            args += ["--api-key", cfg.api_key]
        if cfg.served_model_name:
            args += ["--served-model-name", cfg.served_model_name]
        return args

    def _spawn(
        self, name: str, module: str, args: list[str], env_overrides: dict | None = None
    ) -> None:
        log_path = self._log_dir / f"{name}.log"
        log = open(log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_overrides or {}))
        process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the launcher, which stops children in order
        )
        log.close()
        self._children.append(_Child(name, process, log_path))

    def _wait_ready(self) -> None:
        url = f"http://{self._client_host}:{self.config.port}/ready"
        deadline = time.monotonic() + self.config.ready_timeout_s
        while time.monotonic() < deadline:
            self.check_children()
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        tails = "\n".join(f"--- {c.name}:\n{c.log_tail()[-800:]}" for c in self._children)
        raise LaunchError(
            f"the stack was not ready after {self.config.ready_timeout_s:.0f}s; "
            f"logs in {self._log_dir}\n{tails}"
        )

    def pids(self) -> list[int]:
        """Process ids of every running service and of the embedded Redis."""
        pids = [child.process.pid for child in self._children]
        if self._redis is not None and self._redis.pid is not None:
            pids.append(self._redis.pid)
        return pids

    def named_pids(self) -> dict[str, int]:
        """Each running service's process id by its name, and the embedded Redis's."""
        pids = {child.name: child.process.pid for child in self._children}
        if self._redis is not None and self._redis.pid is not None:
            pids["redis"] = self._redis.pid
        return pids

    def check_children(self) -> None:
        """Raise LaunchError naming the first child that exited, with its log tail."""
        for child in self._children:
            code = child.process.poll()
            if code is not None:
                raise LaunchError(
                    f"{child.name} exited with code {code}; last log lines:\n{child.log_tail()}"
                )

    def stop(self) -> None:
        """Stop the gateway, the scheduler, the workers, then Redis (SIGTERM, then SIGKILL)."""
        self._stop_services()
        if self._redis is not None:
            self._redis.stop()
            self._redis = None

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# Starts of the services before a lost port race is reported as the failure it is.
PORT_RACE_ATTEMPTS = 3
# What a service's log says when its port was taken (Python, gRPC, torch.distributed).
_PORT_TAKEN = ("Address already in use", "Failed to bind", "EADDRINUSE")


def _visible_gpus(num_workers: int) -> list[str]:
    """GPU ids to hand out one per worker: CUDA_VISIBLE_DEVICES's, else 0..num_workers-1."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible:
        return [gpu.strip() for gpu in visible.split(",") if gpu.strip()]
    return [str(i) for i in range(num_workers)]


def _terminate(process: subprocess.Popen, timeout_s: float = 10.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def serve(config: ServeConfig) -> int:
    """Run the stack in the foreground until Ctrl-C/SIGTERM or a child's death."""

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    # SIGTERM stops the stack like Ctrl-C; SIGINT is re-armed because a shell that starts us
    # in the background may have set it to "ignore".
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stack = LocalStack(config)
    try:
        print(f"orca serve: starting (logs in {stack.log_dir})", flush=True)
        stack.start()
        print(
            f"orca serve: ready  http {stack.base_url}  grpc {stack.grpc_target}  redis {stack.redis_url}",
            flush=True,
        )
        while True:
            stack.check_children()
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    except (LaunchError, RedisStartError) as exc:
        print(f"orca serve: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        print("orca serve: stopping", flush=True)
        stack.stop()
        print("orca serve: stopped", flush=True)
