"""`orca serve` as a user runs it: prints where it listens, stops everything on Ctrl-C or
SIGTERM, and reports a child that fails with its log tail."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from stack_testing import e2e_serve_config

from orca.embedded_redis import free_port


def _serve(model_dir, *extra: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "orca.cli", "serve", "--model", str(model_dir), "--port", str(port),
         "--grpc-port", str(free_port()), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    return process, port


def _read_until(process: subprocess.Popen, needle: str, timeout_s: float = 120) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} not printed; got {lines}")


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid,ppid"], capture_output=True, text=True).stdout.split(
        "\n"
    )[1:]
    return [int(p) for p, pp in (line.split() for line in out if line.strip()) if int(pp) == pid]


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_serve_prints_ready_and_stops_everything(demo_model_dir, stop_signal):
    process, port = _serve(demo_model_dir)
    try:
        lines = _read_until(process, "orca serve: ready")
        assert f"http://127.0.0.1:{port}/v1" in lines[-1]
        assert httpx.get(f"http://127.0.0.1:{port}/ready", timeout=10).status_code == 200
        children = _children_of(process.pid)
        assert len(children) >= 4, "redis, worker, scheduler and gateway"
        process.send_signal(stop_signal)
        assert process.wait(timeout=60) == 0
        for pid in children:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if process.poll() is None:
            process.kill()


def test_failing_child_is_reported_with_its_log(demo_model_dir, tmp_path):
    for f in demo_model_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    config["architectures"] = ["NoSuchModelForCausalLM"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    process, _ = _serve(tmp_path)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 1
    assert "worker exited" in output
    assert "NoSuchModelForCausalLM" in output


def test_a_lost_port_race_is_retried(demo_model_dir, tmp_path, monkeypatch):
    """A port the launcher picked free is taken before the scheduler binds it: the stack is
    started again on fresh ports, and serves."""
    import socket

    import orca.launcher as launcher

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    calls = []

    def racy_free_port() -> int:
        calls.append(1)
        # One worker: its port, its rendezvous, then the scheduler's metrics port.
        return taken if len(calls) == 3 else free_port()

    monkeypatch.setattr(launcher, "free_port", racy_free_port)
    config = e2e_serve_config(demo_model_dir, tmp_path / "logs", 120)
    try:
        with launcher.LocalStack(config) as stack:
            assert stack.scheduler_metrics_port != taken
            ready = httpx.get(stack.base_url.removesuffix("/v1") + "/ready", timeout=10)
            assert ready.status_code == 200
        assert "Address already in use" in (tmp_path / "logs" / "scheduler.log").read_text()
    finally:
        blocker.close()
