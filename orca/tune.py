"""`orca tune`: the paper's way of choosing the maximum batch size.

Serve the synthesized workload online (Poisson arrivals, `orca.online`) at a sweep of rates
under each candidate setting of `max_num_seqs` and `max_num_batched_tokens`, and keep the
setting that sustains the highest rate whose median normalized latency stays within the
latency budget (ties: the higher achieved rate at that rate). The engine is built once; each
setting gets a fresh scheduler over the same KV pool (`LLM.reconfigure`).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orca.online import max_rate_within, sweep
from orca.workload import TraceRequest

# What `tune` varies, and what `orca serve --scheduler-config` reads back.
TUNED_KEYS = ("max_num_seqs", "max_num_batched_tokens")


@dataclass
class SettingResult:
    """One candidate setting and how it served the sweep."""

    setting: dict[str, int]
    rows: list[dict[str, Any]] = field(default_factory=list)
    best_rate: float | None = None  # highest rate within the budget, None if none was


def candidate_settings(
    max_num_seqs: list[int], max_num_batched_tokens: list[int]
) -> list[dict[str, int]]:
    """Every combination, in the order given (sequences outer)."""
    return [
        {"max_num_seqs": s, "max_num_batched_tokens": t}
        for s, t in itertools.product(max_num_seqs, max_num_batched_tokens)
    ]


def pick_best(results: list[SettingResult]) -> SettingResult | None:
    """The setting with the highest rate within the budget; ties go to the higher achieved
    rate there, then to the earlier candidate. None when no setting met the budget."""
    best, best_key = None, None
    for result in results:
        if result.best_rate is None:
            continue
        achieved = next(
            (r["achieved_req_s"] for r in result.rows if r["rate"] == result.best_rate), 0.0
        )
        key = (result.best_rate, achieved)
        if best_key is None or key > best_key:
            best, best_key = result, key
    return best


def tune(
    llm: Any,
    requests: list[TraceRequest],
    settings: list[dict[str, int]],
    rates: list[float],
    budget_ms: float,
    on_result=None,
) -> tuple[list[SettingResult], SettingResult | None]:
    """Sweep `rates` under every setting; returns every result and the best one. `on_result`
    (if given) is called with each SettingResult as it is done."""
    results = []
    for setting in settings:
        llm.reconfigure(**setting)
        rows = sweep(llm, requests, rates)
        result = SettingResult(dict(setting), rows, max_rate_within(rows, budget_ms))
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results, pick_best(results)


def write_scheduler_config(path: str | Path, setting: dict[str, int]) -> None:
    """Write the chosen setting as JSON, for `orca serve --scheduler-config`."""
    Path(path).write_text(json.dumps({k: setting[k] for k in TUNED_KEYS}, indent=2) + "\n")


def read_scheduler_config(path: str | Path) -> dict[str, int]:
    """The settings a `write_scheduler_config` file holds; ValueError for anything else."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read scheduler config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"scheduler config {path}: expected a JSON object")
    unknown = sorted(set(data) - set(TUNED_KEYS))
    if unknown:
        raise ValueError(f"scheduler config {path}: unknown keys {unknown}")
    for key, value in data.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"scheduler config {path}: {key} must be a positive int")
    return data


def format_table(results: list[SettingResult], budget_ms: float) -> str:
    """Markdown: per setting, the median normalized latency at each rate and the best rate
    within the budget."""
    rates = sorted({r["rate"] for res in results for r in res.rows})
    head = " | ".join(f"{rate:g} req/s" for rate in rates)
    lines = [
        f"| max_num_seqs | max_num_batched_tokens | {head} | best rate ≤ {budget_ms:g} ms/token |",
        "|---" * (3 + len(rates)) + "|",
    ]
    for res in results:
        by_rate = {r["rate"]: r for r in res.rows}
        cells = []
        for rate in rates:
            med = by_rate.get(rate, {}).get("median_norm_ms")
            cells.append("-" if med is None else f"{med:.1f}")
        best = "-" if res.best_rate is None else f"{res.best_rate:g}"
        s = res.setting
        lines.append(
            f"| {s['max_num_seqs']} | {s['max_num_batched_tokens']} | {' | '.join(cells)} | {best} |"
        )
    return "\n".join(lines)
