"""bench/stack_bench.py's pure helpers: metric parsing and deltas, the request bodies, the
summary of a pass, the fresh-prefix trace. No services, no torch."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack_bench import (  # noqa: E402
    completion_body,
    control_plane_summary,
    fresh_prefix,
    load_summary,
    metric_deltas,
    parse_prometheus,
    percentile,
    process_cpu_seconds,
    summarize_responses,
    with_ratios,
    worker_busy_summary,
)
from bench.trace import TraceRequest, trace  # noqa: E402

SCRAPE = """\
# HELP orca_control_plane_overhead_seconds Host time per iteration outside the worker.
# TYPE orca_control_plane_overhead_seconds histogram
orca_control_plane_overhead_seconds_bucket{le="0.001"} 3.0
orca_control_plane_overhead_seconds_bucket{le="+Inf"} 10.0
orca_control_plane_overhead_seconds_sum 0.02
orca_control_plane_overhead_seconds_count 10.0
orca_control_plane_overhead_seconds_created 1.7e9
orca_plan_build_seconds_sum{pipeline="0"} 0.004
orca_plan_build_seconds_sum{pipeline="1"} 0.001
orca_plan_build_seconds_count{pipeline="0"} 8.0
orca_plan_build_seconds_count{pipeline="1"} 2.0
rpc_latency{quantile="0.5"} 0.3
vllm:num_requests_running 4.0
orca_requests_total{finish_reason="length"} 7 1700000000000
garbage line without a number x
"""


def test_parse_prometheus_sums_label_sets_and_drops_buckets():
    samples = parse_prometheus(SCRAPE)
    assert samples["orca_control_plane_overhead_seconds_count"] == 10.0
    assert samples["orca_plan_build_seconds_sum"] == pytest.approx(0.005)
    assert samples["orca_plan_build_seconds_count"] == 10.0
    assert samples["vllm:num_requests_running"] == 4.0
    assert samples["orca_requests_total"] == 7.0  # the timestamp is not the value
    assert not any(k.endswith(("_bucket", "_created")) for k in samples)
    assert "rpc_latency" not in samples and "garbage" not in samples


def test_deltas_and_control_plane_means():
    before = parse_prometheus(SCRAPE)
    after = dict(before)
    after["orca_control_plane_overhead_seconds_sum"] += 0.3
    after["orca_control_plane_overhead_seconds_count"] += 100
    after["orca_plan_build_seconds_sum"] += 0.05
    after["orca_plan_build_seconds_count"] += 100
    after["vllm:num_requests_running"] = 0.0  # a gauge: no delta
    deltas = metric_deltas(before, after)
    assert "vllm:num_requests_running" not in deltas
    assert "orca_requests_total" not in deltas  # did not move
    summary = control_plane_summary(deltas, seconds=3.0)
    assert summary["iterations"] == 100  # the overhead histogram's count: no counter moved
    assert summary["control_plane_mean_ms"] == pytest.approx(3.0)
    assert summary["plan_build_mean_ms"] == pytest.approx(0.5)
    assert summary["control_plane_share"] == pytest.approx(0.1)
    deltas.update(
        {
            "orca_iterations_total": 90.0,
            "orca_batch_size_sum": 900.0,
            "orca_batch_size_count": 90.0,
            "orca_iteration_seconds_sum": 2.7,
            "orca_iteration_seconds_count": 90.0,
        }
    )
    summary = control_plane_summary(deltas, seconds=3.0)
    assert summary["iterations"] == 90  # the counter wins
    assert summary["batch_size_mean"] == pytest.approx(10.0)
    assert summary["iteration_mean_ms"] == pytest.approx(30.0)
    assert "iteration_share" not in summary and "batch_size_share" not in summary


def test_control_plane_summary_tolerates_missing_metrics():
    assert control_plane_summary({}, 1.0) == {}
    summary = control_plane_summary({"orca_scheduler_iterations_total": 42.0}, 1.0)
    assert summary == {"iterations": 42, "iterations_metric": "orca_scheduler_iterations_total"}


def test_fresh_prefix_keeps_counts_changes_first_ids():
    requests = trace(64, 512, seed=0)
    fresh = fresh_prefix(requests, 512, 1)
    for old, new in zip(requests, fresh, strict=True):
        assert len(new.prompt_token_ids) == len(old.prompt_token_ids)
        assert new.output_len == old.output_len
        assert new.prompt_token_ids[1:] == old.prompt_token_ids[1:]
        assert new.prompt_token_ids[0] != old.prompt_token_ids[0]
        assert 10 <= new.prompt_token_ids[0] < 512
    assert fresh_prefix([TraceRequest([511, 3], 1)], 512, 1)[0].prompt_token_ids == [10, 3]


def test_completion_body():
    body = completion_body("m", TraceRequest([11, 12], 5), stream=False)
    assert body == {
        "model": "m",
        "prompt": [11, 12],
        "max_tokens": 5,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": False,
    }
    streaming = completion_body("m", TraceRequest([11], 1), stream=True)
    assert streaming["stream"] is True and streaming["stream_options"] == {"include_usage": True}


def test_summarize_responses_counts_wrong_lengths_and_errors():
    requests = [TraceRequest([10] * 4, 2), TraceRequest([10] * 3, 4), TraceRequest([10], 1)]
    results = [
        {"completion_tokens": 2, "prompt_tokens": 4, "latency_s": 1.0, "retries": 1},
        {"completion_tokens": 3, "prompt_tokens": 3, "latency_s": 2.0},
        {"error": "HTTP 500: boom"},
    ]
    out = summarize_responses(requests, results, seconds=2.0)
    assert out["wrong_lengths"] == 2  # one short, one failed
    assert out["failed"] == 1 and out["retries"] == 1
    assert out["req_s"] == 1.0  # two answered in 2 s
    assert out["out_tok_s"] == pytest.approx((2 + 3) / 2.0)
    assert out["total_tok_s"] == pytest.approx((5 + 7) / 2.0)
    assert out["first_errors"] == ["HTTP 500: boom"]
    assert with_ratios(dict(out), {"req_s": 2.0, "out_tok_s": 5.0})["ratio_req_s"] == 0.5


def test_percentile():
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile(list(range(1, 101)), 99) == 99


def test_worker_busy_shares_per_stage():
    def scrape_with(stage0: float, stage1: float) -> str:
        line = 'orca_worker_busy_seconds_total{pipeline="0",stage="%d",tp_rank="0"} %s\n'
        waited = 'orca_worker_waited_seconds_total{pipeline="0",stage="%d",tp_rank="0"} %s\n'
        return line % (0, stage0) + line % (1, stage1) + waited % (0, stage0 / 10)

    before = parse_prometheus(scrape_with(1.0, 2.0))
    after = parse_prometheus(scrape_with(4.0, 3.5))
    assert after["orca_worker_busy_seconds_total"] == 7.5  # the labels summed, as for others
    summary = worker_busy_summary(metric_deltas(before, after), seconds=4.0)
    assert summary["worker_busy_share"] == {"p0s0r0": 0.75, "p0s1r0": 0.375}
    assert summary["worker_busy_share_min"] == 0.375
    assert summary["worker_busy_share_mean"] == pytest.approx(0.5625)
    assert summary["worker_waited_share_mean"] == pytest.approx(0.3 / 4.0)  # stage 0 only
    assert worker_busy_summary({}, seconds=4.0) == {}
    assert worker_busy_summary(metric_deltas(before, after), seconds=0) == {}


def test_load_summary_gives_cpu_and_redis_shares():
    cpu = process_cpu_seconds({"me": os.getpid(), "gone": 2**22 + 7})
    assert set(cpu) == {"me"} and cpu["me"] > 0  # a missing process is left out
    summary = load_summary(
        {"gateway": 1.0, "scheduler": 2.0},
        {"gateway": 2.0, "scheduler": 2.5, "redis": 9.0},  # redis: no "before", left out
        {"xadd": (10, 1000), "xread": (5, 500)},
        {"xadd": (30, 3000), "xread": (5, 500), "xack": (4, 2000)},
        seconds=2.0,
    )
    assert summary["cpu_share"] == {"gateway": 0.5, "scheduler": 0.25}
    assert summary["redis_commands"] == {
        "xack": {"calls": 4, "ms": 2.0},
        "xadd": {"calls": 20, "ms": 2.0},
    }
    assert summary["redis_busy_share"] == 0.002
    assert load_summary({}, {}, {}, {}, seconds=0) == {}
