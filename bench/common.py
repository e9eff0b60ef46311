"""What every benchmark script shares: the JSON-lines recorder, device ceilings, memory release."""

from __future__ import annotations

import gc
import hashlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


class Recorder:
    """Prints one JSON line per measurement (flushed) and appends it to a .jsonl file.

    Every line carries the run's common fields (run id, shape, ...) and a `stage` naming
    what was measured; results are also kept in `self.results[stage]` for the summary.
    """

    def __init__(self, out_path: str | Path | None, **common: Any) -> None:
        self.out_path = Path(out_path) if out_path else None
        if self.out_path is not None:
            self.out_path.parent.mkdir(parents=True, exist_ok=True)
        self.common = common
        self.results: dict[str, dict[str, Any]] = {}

    def record(self, stage: str, **fields: Any) -> dict[str, Any]:
        """Write one measurement line and keep it under `stage`."""
        row = {**self.common, "stage": stage, **fields}
        line = json.dumps(row, default=str)
        print(line, flush=True)
        if self.out_path is not None:
            with self.out_path.open("a") as f:
                f.write(line + "\n")
        self.results[stage] = row
        return row


def progress(message: str) -> None:
    """A human-readable progress line (stderr, flushed, so it shows under any buffering)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sync(device: str) -> None:
    """Wait for all queued device work (timings read the host clock after this)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def env_info(device: str) -> dict[str, Any]:
    """Versions, device name and the source commit, recorded once per run."""
    import torch
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": device,
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "commit": git_commit(),
        "source_sha1": source_hash(),
    }
    return info


def source_hash() -> str:
    """A hash of the engine's Python sources: names the code measured even where there is
    no .git (the device machine) or the tree has uncommitted changes."""
    digest = hashlib.sha1()
    for top in ("orca", "services", "kernels", "protos", "bench"):
        for path in sorted((REPO_ROOT / top).rglob("*.py")):
            digest.update(str(path.relative_to(REPO_ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def git_commit() -> str | None:
    """The checked-out commit (read-only `git rev-parse`), or None where there is no .git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def measure_ceilings(device: str) -> dict[str, float]:
    """The device's copy bandwidth (bytes read + written) and dense matmul rate, measured.

    CUDA: a 2 GiB bf16 device-to-device copy and an 8192^3 bf16 matmul (as peers_hf.py).
    CPU (smoke runs only): a 128 MiB float32 copy and a 1024^3 float32 matmul.
    """
    import torch

    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    n = (1 << 30) if cuda else (1 << 25)
    reps = 10 if cuda else 3
    x = torch.randn(n, dtype=dtype, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        y.copy_(x)
    sync(device)
    copy_s = (time.perf_counter() - t) / reps
    copy_bytes = 2 * x.numel() * x.element_size()
    del x, y
    m = 8192 if cuda else 1024
    a = torch.randn(m, m, dtype=dtype, device=device)
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    mm_s = (time.perf_counter() - t) / reps
    del a, b
    free_device_memory(device)
    return {"copy_GBps": copy_bytes / copy_s / 1e9, "matmul_TFLOPs": 2 * m**3 / mm_s / 1e12}


def free_device_memory(device: str) -> dict[str, float]:
    """Collect garbage and return cached blocks to the driver; report what is still held."""
    import torch

    gc.collect()
    if not device.startswith("cuda"):
        return {}
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    return {
        "allocated_GB": torch.cuda.memory_allocated() / 1e9,
        "reserved_GB": torch.cuda.memory_reserved() / 1e9,
        "free_GB": free / 1e9,
        "total_GB": total / 1e9,
    }


def error_text(exc: BaseException) -> str:
    """A short, one-line description of an exception for the results file."""
    return f"{type(exc).__name__}: {exc}"[:500]
