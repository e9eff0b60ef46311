"""The committed generated code must match the .proto files."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import gen_protos  # noqa: E402


def test_generated_code_is_fresh(tmp_path):
    written = gen_protos.generate(tmp_path)
    assert written, "no .proto compiled"
    for fresh in written:
        committed = gen_protos.OUT_DIR / fresh.name
        assert committed.exists(), f"{committed} missing: run python scripts/gen_protos.py"
        assert committed.read_text() == fresh.read_text(), (
            f"{committed} is stale: run python scripts/gen_protos.py"
        )
