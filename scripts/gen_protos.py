"""Compile protos/orca/v1/*.proto into the importable package protos/orca_proto/v1.

Run after editing a .proto: `python scripts/gen_protos.py`. The generated files are
committed; tests/test_protos_fresh.py fails when they are stale.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PROTO_DIR = PROTO_ROOT / "orca" / "v1"
OUT_DIR = PROTO_ROOT / "orca_proto" / "v1"


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (grpcio-tools) on every .proto and write the Python modules to out_dir."""
    from grpc_tools import protoc  # a dev tool: imported only when generating

    protos = sorted(PROTO_DIR.glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{Path(protoc.__file__).parent / '_proto'}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(p) for p in protos],
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for src in sorted((Path(tmp) / "orca" / "v1").iterdir()):
            # The .proto package is orca.v1, but `orca` is our top package: point imports
            # at orca_proto.v1 instead.
            text = re.sub(r"\bfrom orca\.v1 import\b", "from orca_proto.v1 import", src.read_text())
            dst = out_dir / src.name
            dst.write_text(text)
            written.append(dst)
    return written


def main() -> int:
    """Entry point: regenerate in place (default) or into --out."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
