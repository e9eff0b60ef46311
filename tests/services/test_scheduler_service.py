"""The scheduler service end to end: requests written straight into `orca:requests`, tokens
read from `orca:out:<id>`, a real `orca-worker` process, a real `orca-scheduler` process."""

from __future__ import annotations

import signal
import time
import urllib.request

import grpc
import pytest
from tiny_models import random_prompts

from orca import SamplingParams
from orca.embedded_redis import free_port
from orca_proto import redis_streams as rs
from orca_proto.v1 import stream_pb2, worker_pb2, worker_pb2_grpc

VOCAB_SIZE = 384
MAX_MODEL_LEN = 512


def reference(llm, prompts, max_tokens, ignore_eos=False):
    """(tokens, finish reason) of the offline engine for each prompt, greedy."""
    params = [
        SamplingParams(max_tokens=m, temperature=0.0, ignore_eos=ignore_eos)
        for m in (max_tokens if isinstance(max_tokens, list) else [max_tokens] * len(prompts))
    ]
    outs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
    return [(o.token_ids, o.finish_reason) for o in outs]


def test_greedy_tokens_equal_the_offline_engine(harness, reference_llm):
    metrics_port = free_port()
    harness.start_scheduler("--metrics-port", str(metrics_port), "--served-model-name", "tiny")
    prompts = random_prompts((5, 17, 33, 40), VOCAB_SIZE, seed=1)
    wants = [
        reference(reference_llm, [p], 12, ignore_eos=i % 2 == 0)[0] for i, p in enumerate(prompts)
    ]
    for i, prompt in enumerate(prompts):
        harness.submit(f"r{i}", prompt, max_tokens=12, ignore_eos=i % 2 == 0)
    for i, prompt in enumerate(prompts):
        chunks = harness.wait_for_chunks(f"r{i}")
        want, reason = wants[i]
        assert harness.tokens(chunks) == want
        final = chunks[-1]
        assert final.finish_reason == reason
        assert final.usage.prompt_tokens == len(prompt)
        assert final.usage.completion_tokens == len(want)
        assert all(not c.finished for c in chunks[:-1])
        # The output stream expires once finished.
        harness.eventually(lambda i=i: harness.redis.ttl(rs.output_stream(f"r{i}")) > 0)
    harness.eventually(lambda: harness.pending() == 0)

    # The same prompt again: its full blocks (but the last token) come from the prefix cache.
    harness.submit("again", prompts[3], max_tokens=12, ignore_eos=False)
    chunks = harness.wait_for_chunks("again")
    assert (harness.tokens(chunks), chunks[-1].finish_reason) == wants[3]
    assert chunks[-1].usage.cached_tokens == 32

    load = harness.load()
    assert (load.model, load.max_model_len, load.num_pipelines) == ("tiny", MAX_MODEL_LEN, 1)
    assert time.time() - load.updated_at_unix < 5
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
    for name in (
        "orca_num_requests_running",
        "orca_num_requests_waiting",
        "orca_kv_cache_usage_perc",
        "orca_iterations_total",
        "orca_iteration_seconds_bucket",
        "orca_plan_build_seconds_bucket",
        "orca_control_plane_overhead_seconds_bucket",
        "orca_batch_size_bucket",
        "orca_preemptions_total",
        "orca_dead_letters_total",
    ):
        assert name in body, name
    assert 'orca_requests_finished_total{reason="length"}' in body


def test_many_concurrent_requests_get_exactly_their_tokens(harness, reference_llm):
    # Small batches and token budget: requests queue, prompts are chunked, and the 64 blocks
    # run short, so that requests are preempted and recomputed.
    lengths = tuple(3 + (i * 37) % 190 for i in range(32))
    prompts = random_prompts(lengths, VOCAB_SIZE, seed=2)
    prompts[5] = prompts[4][:40] + prompts[5][:9]  # shares a prefix with prompt 4
    max_tokens = [8 + (i * 7) % 40 for i in range(32)]
    want = reference(reference_llm, prompts, max_tokens)
    for i, (prompt, m) in enumerate(zip(prompts, max_tokens, strict=True)):
        harness.submit(f"c{i}", prompt, max_tokens=m)
    # Started after the requests are in: it reads them all at once (the stream is read from
    # its start), as the offline engine takes them.
    metrics_port = free_port()
    harness.start_scheduler(
        "--max-num-seqs", "8", "--max-num-batched-tokens", "48", "--metrics-port", str(metrics_port)
    )
    for i in range(len(prompts)):
        chunks = harness.wait_for_chunks(f"c{i}")
        assert (harness.tokens(chunks), chunks[-1].finish_reason) == want[i], f"c{i}"
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
    [preemptions] = [
        line for line in body.splitlines() if line.startswith("orca_preemptions_total")
    ]
    assert float(preemptions.split()[-1]) > 0


def test_malformed_entries_go_to_the_dead_letter_stream(harness, reference_llm):
    harness.start_scheduler()
    r = harness.redis
    r.xadd(rs.REQUESTS_STREAM, {"data": b"\xff\xfe\x00 not a protobuf \xff"})
    r.xadd(rs.REQUESTS_STREAM, {"payload": b"no data field"})
    r.xadd(rs.REQUESTS_STREAM, rs.encode(stream_pb2.StreamRequest(max_tokens=3)))  # no id
    prompt = random_prompts((9,), VOCAB_SIZE, seed=3)[0]
    [want] = reference(reference_llm, [prompt], 5)
    harness.submit("good", prompt, max_tokens=5)

    chunks = harness.wait_for_chunks("good")
    assert (harness.tokens(chunks), chunks[-1].finish_reason) == want
    harness.eventually(lambda: r.xlen(rs.DEAD_LETTER_STREAM) >= 3)
    dead = [fields for _, fields in r.xrange(rs.DEAD_LETTER_STREAM)]
    assert len(dead) == 3
    assert dead[0][b"data"] == b"\xff\xfe\x00 not a protobuf \xff"
    assert dead[1][b"payload"] == b"no data field"
    assert b"no 'data' field" in dead[1][b"reason"]
    assert b"no request_id" in dead[2][b"reason"]
    assert all(b"reason" in d and b"entry_id" in d for d in dead)
    assert harness.pending() == 0


def test_cancel_frees_the_request_and_ends_it_with_abort(harness):
    harness.start_scheduler()
    prompt = random_prompts((20,), VOCAB_SIZE, seed=4)[0]
    harness.submit("long", prompt, max_tokens=480, ignore_eos=True)
    harness.wait_for_chunks("long", until=lambda chunks: len(chunks) >= 1)
    harness.control("long", stream_pb2.Control.CANCEL)
    chunks = harness.wait_for_chunks("long")
    final = chunks[-1]
    assert final.finish_reason == "abort"
    assert 1 <= final.usage.completion_tokens < 480
    assert final.usage.completion_tokens == len(harness.tokens(chunks))

    # A STOP (a stop string matched at the gateway) ends a running request with "stop".
    harness.submit("stopped", prompt, max_tokens=480, ignore_eos=True)
    harness.wait_for_chunks("stopped", until=lambda chunks: len(chunks) >= 1)
    harness.control("stopped", stream_pb2.Control.STOP)
    assert harness.wait_for_chunks("stopped")[-1].finish_reason == "stop"

    # A cancel may reach the scheduler before its request does.
    harness.control("early", stream_pb2.Control.STOP)
    time.sleep(0.2)
    harness.submit("early", prompt, max_tokens=480, ignore_eos=True)
    early = harness.wait_for_chunks("early")
    assert [c.finish_reason for c in early] == ["abort"] and not early[0].token_ids

    def freed() -> bool:
        load = harness.load()
        return (load.num_running, load.num_waiting, load.kv_usage) == (0, 0, 0.0)

    harness.eventually(freed)
    harness.eventually(lambda: harness.pending() == 0)


def test_requests_the_worker_cannot_run_fail_alone(harness, reference_llm):
    harness.start_scheduler()
    good = random_prompts((11,), VOCAB_SIZE, seed=5)[0]
    [want] = reference(reference_llm, [good], 6)
    harness.submit("too-long", [7] * 600, max_tokens=4)
    harness.submit("bad-token", [5, 6, VOCAB_SIZE + 10], max_tokens=4)
    harness.submit("bad-sampling", [5, 6, 7], max_tokens=4, top_logprobs=50)
    harness.submit("no-tokens", [5, 6, 7], max_tokens=0)
    harness.submit("good", good, max_tokens=6)
    for request_id, message in [
        ("too-long", "prompt tokens"),
        ("bad-token", "outside the vocabulary"),
        ("bad-sampling", "top_logprobs"),
        ("no-tokens", "max_tokens"),
    ]:
        [chunk] = harness.wait_for_chunks(request_id)
        assert chunk.finished and chunk.finish_reason == "error", request_id
        assert message in chunk.error, chunk.error
        assert chunk.usage.prompt_tokens > 0
    chunks = harness.wait_for_chunks("good")
    assert (harness.tokens(chunks), chunks[-1].finish_reason) == want


def test_a_request_is_acked_only_after_its_final_chunk(harness):
    harness.start_scheduler()
    harness.submit("acked", random_prompts((8,), VOCAB_SIZE, seed=6)[0], 200, ignore_eos=True)
    saw_pending = False
    deadline = time.monotonic() + 120  # generous: CI machines can be slow
    while time.monotonic() < deadline:
        pending = harness.pending()  # read before the chunks: XACK follows the final XADD
        chunks = harness.chunks("acked")
        if pending == 0:
            assert chunks and chunks[-1].finished, "acked before the final chunk"
            break
        saw_pending |= bool(chunks)
        time.sleep(0.002)
    assert saw_pending and pending == 0
    assert harness.chunks("acked")[-1].usage.completion_tokens == 200


@pytest.mark.parametrize("same_consumer", [True, False], ids=["same-consumer", "claimed"])
def test_a_restarted_scheduler_resumes_from_the_published_tokens(
    harness, reference_llm, same_consumer
):
    prompts = random_prompts((13, 30), VOCAB_SIZE, seed=7)
    want = reference(reference_llm, prompts, 300, ignore_eos=True)
    first = harness.start_scheduler("--consumer-name", "sched-a")
    for i, prompt in enumerate(prompts):
        harness.submit(f"resume{i}", prompt, max_tokens=300, ignore_eos=True)
    harness.wait_for_chunks("resume1", until=lambda chunks: len(chunks) >= 5)
    first.signal(signal.SIGKILL)
    first.wait()
    published = [harness.tokens(harness.chunks(f"resume{i}")) for i in range(2)]
    assert all(0 < len(p) < 300 for p in published)
    assert harness.pending() == 2

    name = ("--consumer-name", "sched-a") if same_consumer else ("--claim-idle-s", "0.5")
    harness.start_scheduler(*name)
    for i in range(2):
        chunks = harness.wait_for_chunks(f"resume{i}")
        tokens = harness.tokens(chunks)  # asserts no index twice, no gap
        assert (tokens, chunks[-1].finish_reason) == want[i]
        assert tokens[: len(published[i])] == published[i]
    harness.eventually(lambda: harness.pending() == 0)


def test_sigterm_drains_running_requests_and_reads_no_new_ones(harness):
    scheduler = harness.start_scheduler()
    harness.submit("running", random_prompts((10,), VOCAB_SIZE, seed=8)[0], 450, ignore_eos=True)
    chunks = harness.wait_for_chunks("running", until=lambda chunks: len(chunks) >= 1)
    assert not chunks[-1].finished
    scheduler.signal(signal.SIGTERM)
    harness.eventually(lambda: "intake_stopped" in scheduler.log_tail())
    harness.submit("late", [5, 6, 7], max_tokens=4)
    assert scheduler.wait() == 0
    final = harness.chunks("running")[-1]
    assert (final.finish_reason, final.usage.completion_tokens) == ("length", 450)
    assert harness.chunks("late") == [] and harness.pending() == 0
    assert harness.load().num_pipelines == 0


def test_a_failed_step_fails_its_requests_and_a_lost_worker_is_waited_for(
    harness, tiny_llama, reference_llm
):
    port = free_port()
    worker, address = harness.start_worker(tiny_llama, port=port)
    scheduler = harness.start_scheduler(worker_address=address)
    prompt = random_prompts((12,), VOCAB_SIZE, seed=9)[0]
    harness.submit("before", prompt, max_tokens=480, ignore_eos=True)
    harness.wait_for_chunks("before", until=lambda chunks: len(chunks) >= 1)
    with grpc.insecure_channel(address) as channel:
        reply = worker_pb2_grpc.WorkerStub(channel).Drain(worker_pb2.DrainRequest())
    assert reply.num_active_seqs == 1
    # The next plan carries a new sequence: the draining worker refuses the whole step.
    harness.submit("after", prompt, max_tokens=4)
    for request_id in ("before", "after"):
        final = harness.wait_for_chunks(request_id)[-1]
        assert final.finish_reason == "error" and "draining" in final.error, final
    assert scheduler.process.poll() is None  # still serving
    harness.eventually(lambda: harness.pending() == 0)

    # Losing the only pipeline: the scheduler keeps serving, requests wait for a pipeline...
    worker.signal(signal.SIGKILL)
    worker.wait()
    harness.eventually(lambda: "pipeline_lost" in scheduler.log_tail())
    harness.eventually(lambda: harness.load().num_pipelines == 0)
    [want] = reference(reference_llm, [prompt], 6)
    harness.submit("waits", prompt, max_tokens=6)
    time.sleep(0.5)
    assert harness.chunks("waits") == [] and scheduler.process.poll() is None
    assert harness.load().num_waiting == 1
    # ... until a worker is back at the address: it is picked up with no restart.
    harness.start_worker(tiny_llama, port=port)
    chunks = harness.wait_for_chunks("waits")
    assert (harness.tokens(chunks), chunks[-1].finish_reason) == want
    harness.eventually(lambda: harness.load().num_pipelines == 1)
