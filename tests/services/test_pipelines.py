"""The scheduler service with several pipelines: requests balanced over two pipelines of real
`orca-worker` processes give the offline engine's tokens, and still do when one worker is
killed mid-run (its requests are recomputed on the other pipeline); with pp = 2 (stand-in
workers, 2 stages x 2 ranks) two plans are in flight at once."""

from __future__ import annotations

import re
import signal
import urllib.request

from standin_worker import reference_output, start_pipelines
from test_scheduler_service import VOCAB_SIZE, reference
from tiny_models import random_prompts

from orca.embedded_redis import free_port


def scrape(port: int) -> dict[str, float]:
    """The scheduler's metrics: 'name{labels}' -> value."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    samples = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_two_pipelines_share_the_requests_and_survive_a_killed_worker(
    harness, tiny_llama, reference_llm
):
    (_, first), (second_proc, second) = (harness.start_worker(tiny_llama) for _ in range(2))
    metrics_port = free_port()
    scheduler = harness.start_scheduler(
        "--metrics-port", str(metrics_port), "--pipelines", "2", worker_address=f"{first},{second}"
    )
    harness.eventually(lambda: harness.load().num_pipelines == 2)

    # Short requests: balanced over both pipelines, each the offline engine's greedy tokens.
    prompts = random_prompts((7, 19, 33, 12, 25, 40), VOCAB_SIZE, seed=11)
    want = reference(reference_llm, prompts, 10)
    for i, prompt in enumerate(prompts):
        harness.submit(f"s{i}", prompt, max_tokens=10)
    for i in range(len(prompts)):
        chunks = harness.wait_for_chunks(f"s{i}")
        assert (harness.tokens(chunks), chunks[-1].finish_reason) == want[i], f"s{i}"
    metrics = scrape(metrics_port)
    for pipeline in ("0", "1"):
        assert metrics[f'orca_pipeline_iterations_total{{pipeline="{pipeline}"}}'] > 0
        assert f'orca_plans_in_flight{{pipeline="{pipeline}"}}' in metrics
    assert metrics["orca_num_pipelines"] == 2

    # Long requests on both pipelines; pipeline 1's worker dies mid-run.
    prompts = random_prompts((9, 30, 14, 22, 5, 17), VOCAB_SIZE, seed=12)
    want = reference(reference_llm, prompts, 160, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        harness.submit(f"k{i}", prompt, max_tokens=160, ignore_eos=True)
    for i in range(len(prompts)):
        harness.wait_for_chunks(f"k{i}", until=lambda chunks: len(chunks) >= 3)
    second_proc.signal(signal.SIGKILL)
    second_proc.wait()
    for i in range(len(prompts)):
        chunks = harness.wait_for_chunks(f"k{i}", timeout_s=60)
        # tokens() asserts that no index is published twice and none is missing.
        assert (harness.tokens(chunks), chunks[-1].finish_reason) == want[i], f"k{i}"
    log = scheduler.log_tail(400)
    assert re.search(r"pipeline_lost pipeline=1 .*requeued=[1-9]", log), log
    assert scheduler.process.poll() is None
    metrics = scrape(metrics_port)
    assert metrics["orca_requests_requeued_total"] >= 1
    assert metrics["orca_pipeline_failures_total"] >= 1
    assert metrics["orca_num_pipelines"] == 1
    assert 'orca_plans_in_flight{pipeline="1"}' not in metrics
    harness.eventually(lambda: harness.load().num_pipelines == 1)
    harness.eventually(lambda: harness.pending() == 0)


def test_pp2_keeps_two_plans_in_flight(harness):
    workers = start_pipelines(1, pp=2, tp=2, step_delay_s=0.02)
    try:
        metrics_port = free_port()
        scheduler = harness.start_scheduler(
            "--pp", "2", "--tp", "2", "--metrics-port", str(metrics_port),
            worker_address=",".join(w.address for w in workers),
        )  # fmt: skip
        prompts = [[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8]]
        # The second request arrives while the first is in flight: it goes in the other
        # plan slot, and from then on the two alternate, one plan each.
        harness.submit("first", prompts[0], max_tokens=40)
        harness.wait_for_chunks("first", until=lambda chunks: len(chunks) >= 1)
        harness.submit("second", prompts[1], max_tokens=40)
        for request_id, prompt in zip(("first", "second"), prompts, strict=True):
            chunks = harness.wait_for_chunks(request_id)
            assert (harness.tokens(chunks), chunks[-1].finish_reason) == (
                reference_output(prompt, 40),
                "length",
            )
        metrics = scrape(metrics_port)
        on_submit = 'orca_plans_in_flight_on_submit_bucket{le="%s",pipeline="0"}'
        assert metrics[on_submit % "1.0"] < metrics[on_submit % "2.0"]  # some submits at 2
        assert re.search(r"iteration pipeline=0 step_id=\d+ in_flight=2 ", scheduler.log_tail(2000))
        # Every worker's reported step time is counted, per stage and rank.
        busy = 'orca_worker_busy_seconds_total{pipeline="0",stage="%d",tp_rank="%d"}'
        for stage in (0, 1):
            for rank in (0, 1):
                assert metrics[busy % (stage, rank)] > 0.02
        for worker in workers:
            assert not worker.violations
            steps = [r.plan.step_id for r in worker.received]
            assert steps == list(range(1, len(steps) + 1))  # every plan, in order
    finally:
        for worker in workers:
            worker.die()
