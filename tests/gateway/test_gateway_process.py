"""The `orca-gateway` process: flags and ORCA_* env, the ready line, SIGTERM, and no torch."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

import httpx
from gateway_harness import MODEL_NAME

from orca.embedded_redis import free_port

# Runs the gateway's main() with torch made unimportable, as in the gateway's image.
WITHOUT_TORCH = """
import importlib.machinery, sys
_find = importlib.machinery.PathFinder.find_spec
def _hide_torch(name, path=None, target=None):
    return None if name == "torch" or name.startswith("torch.") else _find(name, path, target)
importlib.machinery.PathFinder.find_spec = staticmethod(_hide_torch)
from orca_gateway.main import main
code = main(sys.argv[1:])
assert "torch" not in sys.modules, "the gateway imported torch"
sys.exit(code)
"""

READY = re.compile(
    r"^orca-gateway listening http://127\.0\.0\.1:(\d+) grpc=127\.0\.0\.1:(\d+) model=(\S+)$"
)


def _read_line(stream, timeout_s: float) -> str:
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return line[0].rstrip("\n") if line else ""


def test_gateway_process_serves_without_torch_and_stops_on_sigterm(
    demo_model_dir, redis_url, standin
):
    grpc_port = free_port()
    env = dict(
        os.environ,
        ORCA_REDIS_URL=redis_url,
        ORCA_SERVED_MODEL_NAME=MODEL_NAME,
        ORCA_LOG_LEVEL="warning",
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            WITHOUT_TORCH,
            "--model",
            str(demo_model_dir),
            "--port",
            "0",
            "--grpc-port",
            str(grpc_port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _read_line(process.stdout, timeout_s=30)
        match = READY.match(line)
        assert match, (
            f"bad ready line {line!r}; stderr: {process.stderr.read() if process.poll() is not None else ''}"
        )
        http_port, grpc_seen, model = match.groups()
        assert int(grpc_seen) == grpc_port and model == MODEL_NAME
        base = f"http://127.0.0.1:{http_port}"
        assert httpx.get(f"{base}/health").status_code == 200
        assert httpx.get(f"{base}/ready").status_code == 200
        response = httpx.post(
            f"{base}/v1/chat/completions",
            json={
                "model": MODEL_NAME,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 3,
            },
            timeout=10,
        )
        assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 3

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


def test_console_script_is_declared():
    import importlib.metadata

    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("orca-gateway") == "orca_gateway.main:main"
