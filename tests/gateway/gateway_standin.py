"""A tiny stand-in scheduler for the gateway tests: a real Redis peer, not a mock.

It consumes `orca:requests` with the `schedulers` consumer group, answers each request
with deterministic TokenChunks on `orca:out:<id>`, reads `orca:control` (a CANCEL or STOP
ends a request early, with "abort") and publishes `orca:load`. The output of a request is
its prompt's non-special tokens, repeated until max_tokens: so the completion text of a
text prompt is that text again, which makes expected texts easy to state.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time

import redis

from orca_proto import redis_streams
from orca_proto.redis_streams import LoadReport
from orca_proto.v1 import stream_pb2, worker_pb2

# The demo tokenizer's special tokens are ids 0..4.
NUM_SPECIAL_TOKENS = 5
VOCAB_SIZE = 2048


def output_tokens(request: stream_pb2.StreamRequest) -> tuple[list[int], str]:
    """The tokens the stand-in generates for a request, and the finish reason."""
    source = [t for t in request.prompt_token_ids if t >= NUM_SPECIAL_TOKENS] or [100]
    stops = set(request.stop_token_ids)
    out: list[int] = []
    for token in itertools.islice(itertools.cycle(source), request.max_tokens):
        out.append(token)
        if token in stops:
            return out, "stop"
    return out, "length"


class StandinScheduler:
    """Answers requests from a thread; tests change its attributes to change its behaviour."""

    def __init__(self, redis_url: str, model: str, max_model_len: int = 2048) -> None:
        self._redis = redis.Redis.from_url(redis_url)
        self.model = model
        self.max_model_len = max_model_len
        self.num_waiting = 0
        self.num_pipelines = 1
        self.publish_load_enabled = True
        # Tokens per chunk, and seconds between chunks.
        self.chunk_size = 3
        self.delay_s = 0.0
        # Write every chunk twice (as a restarted scheduler may).
        self.duplicate_chunks = False
        # When set, every request finishes at once with finish_reason "error" and this text.
        self.error: str | None = None
        # Write an undecodable entry before a request's chunks (the gateway must skip it).
        self.garbage_first = False
        self.received: list[stream_pb2.StreamRequest] = []
        self.ended: set[str] = set()  # ids a CANCEL or STOP arrived for
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._control_last_id = "0-0"

    def start(self) -> StandinScheduler:
        """Create the consumer group, publish load once, start the loop thread."""
        with contextlib.suppress(redis.ResponseError):  # BUSYGROUP: it exists
            self._redis.xgroup_create(
                redis_streams.REQUESTS_STREAM, redis_streams.REQUESTS_GROUP, id="0", mkstream=True
            )
        self.publish_load()
        thread = threading.Thread(target=self._loop, name="standin-scheduler", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop every thread and close the client."""
        self._stop.set()
        for thread in list(self._threads):
            thread.join(timeout=10)
        self._redis.close()

    def publish_load(self, age_s: float = 0.0) -> None:
        """Write `orca:load` now (dated `age_s` seconds ago)."""
        report = LoadReport(
            model=self.model,
            max_model_len=self.max_model_len,
            num_waiting=self.num_waiting,
            num_running=len(self.received) % 7,
            kv_usage=0.25,
            num_pipelines=self.num_pipelines,
            updated_at_unix=time.time() - age_s,
        )
        self._redis.hset(redis_streams.LOAD_KEY, mapping=report.to_hash())

    def controls(self) -> list[stream_pb2.Control]:
        """Every Control on `orca:control` so far."""
        entries = self._redis.xrange(redis_streams.CONTROL_STREAM)
        return [redis_streams.decode_control(fields) for _, fields in entries]

    def wait_for_control(self, request_id: str, kind: int, timeout_s: float = 5.0) -> bool:
        """Whether a Control of `kind` for `request_id` lands within the timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(c.request_id == request_id and c.kind == kind for c in self.controls()):
                return True
            time.sleep(0.02)
        return False

    def _loop(self) -> None:
        last_load = 0.0
        while not self._stop.is_set():
            if self.publish_load_enabled and time.monotonic() - last_load > 0.2:
                self.publish_load()
                last_load = time.monotonic()
            self._read_controls()
            replies = self._redis.xreadgroup(
                redis_streams.REQUESTS_GROUP,
                "standin",
                {redis_streams.REQUESTS_STREAM: ">"},
                count=64,
                block=20,
            )
            for _, entries in replies or []:
                for entry_id, fields in entries:
                    request = redis_streams.decode_request(fields)
                    self.received.append(request)
                    thread = threading.Thread(
                        target=self._answer, args=(request, entry_id), daemon=True
                    )
                    thread.start()
                    self._threads.append(thread)

    def _read_controls(self) -> None:
        entries = self._redis.xrange(redis_streams.CONTROL_STREAM, min=f"({self._control_last_id}")
        for entry_id, fields in entries:
            self._control_last_id = entry_id.decode()
            self.ended.add(redis_streams.decode_control(fields).request_id)

    def _answer(self, request: stream_pb2.StreamRequest, entry_id: bytes) -> None:
        key = redis_streams.output_stream(request.request_id)
        if self.error is not None:
            self._write(key, self._chunk(request, 0, [], "error"))
            return
        if self.garbage_first:
            self._redis.xadd(key, {redis_streams.DATA_FIELD: b"\xff\xff\xff"})
        tokens, finish_reason = output_tokens(request)
        for start in range(0, len(tokens), self.chunk_size):
            if self._stop.is_set():
                return
            if request.request_id in self.ended:
                self._write(key, self._chunk(request, start, [], "abort"))
                return
            piece = tokens[start : start + self.chunk_size]
            last = start + len(piece) == len(tokens)
            chunk = self._chunk(request, start, piece, finish_reason if last else "")
            self._write(key, chunk)
            if self.duplicate_chunks:
                self._write(key, chunk)
            if self.delay_s and not last:
                time.sleep(self.delay_s)
        self._redis.xack(redis_streams.REQUESTS_STREAM, redis_streams.REQUESTS_GROUP, entry_id)

    def _chunk(self, request, start: int, tokens: list[int], finish_reason: str):
        chunk = stream_pb2.TokenChunk(
            request_id=request.request_id, first_token_index=start, token_ids=tokens
        )
        if request.sampling.logprobs:
            for i, token in enumerate(tokens):
                logprob = -0.1 * (start + i + 1)
                chunk.logprobs.append(
                    worker_pb2.SampledToken(
                        seq_id=request.request_id,
                        token_id=token,
                        logprob=logprob,
                        top_logprobs=[
                            worker_pb2.TokenLogprob(
                                token_id=(token + k) % VOCAB_SIZE, logprob=logprob - k
                            )
                            for k in range(request.sampling.top_logprobs)
                        ],
                    )
                )
        if finish_reason:
            chunk.finished = True
            chunk.finish_reason = finish_reason
            chunk.usage.prompt_tokens = len(request.prompt_token_ids)
            chunk.usage.completion_tokens = start + len(tokens)
            if finish_reason == "error":
                chunk.error = self.error or ""
        return chunk

    def _write(self, key: str, chunk: stream_pb2.TokenChunk) -> None:
        self._redis.xadd(key, redis_streams.encode(chunk))
