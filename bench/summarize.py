"""Print the summary table of each run in a results file (e.g. after a run was cut short).

python bench/summarize.py bench/results/llama8b.jsonl [more.jsonl ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import summary_table


def runs(path: Path) -> dict[str, dict[str, dict]]:
    """The rows of each run_id in a .jsonl file, as {run_id: {stage: last row}}."""
    out: dict[str, dict[str, dict]] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if "run_id" in row:
            out.setdefault(row["run_id"], {})[row["stage"]] = row
    return out


def main(argv: list[str] | None = None) -> int:
    """One table per run found in the given files."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    args = ap.parse_args(argv)
    for path in args.files:
        for results in runs(path).values():
            env = results.get("env", {})
            bs = results.get("hf_static", {}).get("bs", 32)
            print(summary_table(results, env["shape"], env["n"], env["dtype"], bs) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
