"""bench/online.py's and bench/plot_online.py's pure parts, and one tiny sweep on the CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.online import max_rate_within, online_row, orca_online_sweep  # noqa: E402
from bench.plot_online import curves  # noqa: E402
from bench.trace import trace  # noqa: E402


def test_online_row_from_request_times():
    t0 = 100.0
    arrived = {"a": 100.0, "b": 101.0, "c": 102.0}
    first = {"a": 100.5, "b": 101.2}
    finished = {"a": 101.0, "b": 102.0}  # c never finished
    lens = {"a": 10, "b": 5, "c": 0}
    row = online_row(4.0, arrived, first, finished, lens, t0)
    assert row["n"] == 3 and row["finished"] == 2
    assert row["median_norm_ms"] == pytest.approx((100.0 + 200.0) / 2)  # 1 s/10, 1 s/5
    assert row["ttft_p50_ms"] == pytest.approx((500.0 + 200.0) / 2)
    assert row["tpot_p50_ms"] == pytest.approx((500.0 / 9 + 800.0 / 4) / 2)
    assert row["achieved_req_s"] == pytest.approx(2 / 2.0)


def test_best_rate_needs_every_request_and_the_slo():
    rows = [
        {"rate": 2.0, "n": 8, "finished": 8, "median_norm_ms": 20.0},
        {"rate": 4.0, "n": 8, "finished": 8, "median_norm_ms": 45.0},
        {"rate": 8.0, "n": 8, "finished": 7, "median_norm_ms": 30.0},  # one never finished
        {"rate": 16.0, "n": 8, "finished": 8, "median_norm_ms": 90.0},
    ]
    assert max_rate_within(rows, 50.0) == 4.0
    assert max_rate_within(rows, 10.0) is None


def test_plot_curves_take_the_last_record_of_each_engine():
    rows = [{"rate": 4.0, "median_norm_ms": 30.0, "p99_norm_ms": 60.0},
            {"rate": 2.0, "median_norm_ms": 20.0, "p99_norm_ms": 25.0},
            {"rate": 8.0, "median_norm_ms": None, "p99_norm_ms": None}]  # fmt: skip
    records = [
        {"stage": "orca_online", "rows": [{"rate": 1.0, "median_norm_ms": 1, "p99_norm_ms": 1}]},
        {"stage": "orca_online", "rows": rows},
        {"stage": "hf_cb", "req_s": 9.0},
    ]
    data = curves(records)
    assert list(data) == ["Orca"]
    assert data["Orca"] == {"rate": [2.0, 4.0], "median": [20.0, 30.0], "p99": [25.0, 60.0]}


def test_orca_online_sweep_serves_every_request(tmp_path):
    from tiny_models import make_tiny_checkpoint

    from orca import LLM

    path = make_tiny_checkpoint("llama", tmp_path)
    llm = LLM(model=str(path), dtype="float32")
    requests = trace(6, llm.worker_info.vocab_size, in_lo=4, in_hi=12, out_lo=1, out_hi=6)
    rows = orca_online_sweep(llm, requests, [50.0, 400.0], n_per_rate=6, device="cpu")
    assert [r["rate"] for r in rows] == [50.0, 400.0]
    for row in rows:
        assert row["finished"] == row["n"] == 6
        assert row["median_norm_ms"] > 0 and row["ttft_p50_ms"] > 0
    assert not llm.has_unfinished()
