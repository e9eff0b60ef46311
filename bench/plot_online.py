"""The paper's figure: median (and p99) normalized latency vs offered request rate, Orca
beside the HF peer, from the `orca_online` / `hf_online` records of bench/run.py --rates.

    python bench/plot_online.py bench/results/RUN.jsonl --out docs/img/online_llama8b.png

Needs matplotlib (not a dependency of the project: `pip install matplotlib`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# The engines' online phases, and the label each gets in the plot.
ENGINES = {"orca_online": "Orca", "hf_online": "HF continuous batching"}


def curves(records: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Per engine label: the sorted offered rates and, at each, the median and p99
    normalized latency (ms/token); the last record of each phase wins, rates with no
    finished request are left out."""
    last: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.get("stage") in ENGINES:
            last[record["stage"]] = record
    out = {}
    for stage, record in last.items():
        rows = sorted(
            (r for r in record.get("rows", []) if r.get("median_norm_ms") is not None),
            key=lambda r: r["rate"],
        )
        out[ENGINES[stage]] = {
            "rate": [r["rate"] for r in rows],
            "median": [r["median_norm_ms"] for r in rows],
            "p99": [r["p99_norm_ms"] for r in rows],
        }
    return out


def read_records(paths: list[str]) -> list[dict[str, Any]]:
    """Every JSON line of the given .jsonl files, in order (unparsable lines skipped)."""
    records = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def plot(data: dict[str, dict[str, list[float]]], title: str, out: str, slo_ms: float) -> None:
    """Write the figure to `out` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for label, curve in data.items():
        (line,) = ax.plot(curve["rate"], curve["median"], marker="o", label=f"{label}, median")
        ax.plot(curve["rate"], curve["p99"], linestyle="--", color=line.get_color(), alpha=0.6,
                label=f"{label}, p99")  # fmt: skip
    ax.axhline(slo_ms, color="grey", linewidth=0.8, linestyle=":", label=f"{slo_ms:g} ms/token")
    ax.set_xlabel("offered load, requests/s (Poisson)")
    ax.set_ylabel("normalized latency, ms/token")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)


def main(argv: list[str] | None = None) -> int:
    """Read the records, plot, say where the figure went."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("jsonl", nargs="+", help="bench/run.py --rates output (.jsonl)")
    ap.add_argument("--out", required=True, help="PNG file to write")
    ap.add_argument("--title", default="normalized latency vs rate")
    ap.add_argument("--slo-ms", type=float, default=50.0, help="the SLO line (ms/token)")
    args = ap.parse_args(argv)
    data = curves(read_records(args.jsonl))
    if not data:
        print("no orca_online / hf_online records in the input", file=sys.stderr)
        return 1
    plot(data, args.title, args.out, args.slo_ms)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
