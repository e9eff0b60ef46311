"""A stand-in `orca.v1.Worker` gRPC server for pipelines of any pp x tp, without a model.

Every stand-in checks the plans it gets (sequences announced before use, contiguous
positions, inputs that match what it knows of the sequence) and answers each with a
StepResult; only the last stage's rank 0 carries tokens, computed by `next_token` from the
sequence so far, so that any lost, repeated or misplaced token changes the output. It
records what it received, and can be told to fail a step or to die (server stopped).
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from orca_proto.v1 import worker_pb2, worker_pb2_grpc

VOCAB = 97


def next_token(tokens: list[int]) -> int:
    """The stand-in model: the token that follows `tokens` (never 0: no EOS)."""
    return 1 + (sum(tokens) * 31 + len(tokens) * 7) % (VOCAB - 1)


def reference_output(prompt: list[int], max_tokens: int) -> list[int]:
    """The tokens a correct stack generates for `prompt` (greedy, no stop)."""
    tokens, out = list(prompt), []
    for _ in range(max_tokens):
        out.append(next_token(tokens))
        tokens.append(out[-1])
    return out


@dataclass
class _Seq:
    tokens: list[int]
    computed: int | None = None  # positions whose KV this worker holds


@dataclass
class Received:
    """A plan as a stand-in received it."""

    stream: int  # which Execute stream (1 = the first)
    plan: worker_pb2.StepPlan
    received_at: float
    answered_at: float = 0.0


@dataclass
class StandinWorker(worker_pb2_grpc.WorkerServicer):
    """Worker `ordinal` of a pp x tp topology."""

    ordinal: int
    pp: int = 1
    tp: int = 1
    num_kv_blocks: int = 64
    block_size: int = 4
    max_model_len: int = 512
    step_delay_s: float = 0.0
    fail_steps: dict[int, str] = field(default_factory=dict)  # step id -> error
    received: list[Received] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)  # bad plans seen (tests assert none)

    def __post_init__(self) -> None:
        size = self.pp * self.tp
        self.pipeline = self.ordinal // size
        self.stage = (self.ordinal // self.tp) % self.pp
        self.tp_rank = self.ordinal % self.tp
        self.carries_tokens = self.stage == self.pp - 1 and self.tp_rank == 0
        self._lock = threading.Lock()
        self._stream = 0
        self._seqs: dict[str, _Seq] = {}
        self.server: grpc.Server | None = None
        self.address = ""

    def start(self, host: str = "127.0.0.1", port: int = 0) -> StandinWorker:
        """Serve on host:port (0: a free port); sets `address`."""
        self.server = grpc.server(ThreadPoolExecutor(max_workers=8))
        worker_pb2_grpc.add_WorkerServicer_to_server(self, self.server)
        bound = self.server.add_insecure_port(f"{host}:{port}")
        self.server.start()
        self.address = f"{host}:{bound}"
        return self

    def die(self) -> None:
        """Stop serving at once: open streams break."""
        if self.server is not None:
            self.server.stop(grace=None).wait(5)

    def Info(self, request, context) -> worker_pb2.WorkerInfo:
        return worker_pb2.WorkerInfo(
            model="standin",
            dtype="float32",
            num_kv_blocks=self.num_kv_blocks,
            block_size=self.block_size,
            max_model_len=self.max_model_len,
            stage=self.stage,
            tp_rank=self.tp_rank,
            vocab_size=VOCAB,
            pipeline=self.pipeline,
            pp_size=self.pp,
            tp_size=self.tp,
        )

    def Drain(self, request, context) -> worker_pb2.DrainReply:
        return worker_pb2.DrainReply(num_active_seqs=len(self._seqs))

    def Execute(self, request_iterator, context):
        with self._lock:
            self._stream += 1
            stream = self._stream
            self._seqs.clear()  # a new scheduler: drop what the old one left
        # Plans are read as they arrive (a thread), so `received_at` shows plans in flight.
        arrived: queue.Queue[Received | None] = queue.Queue()

        def read() -> None:
            try:
                for plan in request_iterator:
                    record = Received(stream, plan, time.monotonic())
                    self.received.append(record)
                    arrived.put(record)
            except grpc.RpcError:
                pass
            finally:
                arrived.put(None)

        threading.Thread(target=read, daemon=True).start()
        while (record := arrived.get()) is not None:
            if self.step_delay_s:
                time.sleep(self.step_delay_s)
            with self._lock:
                if stream != self._stream:
                    context.abort(grpc.StatusCode.FAILED_PRECONDITION, "superseded")
                try:
                    result = self._run(record.plan)
                except (AssertionError, KeyError) as exc:
                    self.violations.append(f"step {record.plan.step_id}: {exc!r}")
                    result = worker_pb2.StepResult(step_id=record.plan.step_id, error=repr(exc))
            result.timings.forward_ms = self.step_delay_s * 1000.0  # what a worker reports
            record.answered_at = time.monotonic()
            yield result

    def _run(self, plan: worker_pb2.StepPlan) -> worker_pb2.StepResult:
        result = worker_pb2.StepResult(step_id=plan.step_id)
        if plan.step_id in self.fail_steps:
            result.error = self.fail_steps[plan.step_id]
            return result
        for new in plan.new_seqs:
            assert new.seq_id not in self._seqs, f"{new.seq_id} joined twice"
            self._seqs[new.seq_id] = _Seq(list(new.prompt_token_ids) + list(new.output_token_ids))
        for seq_id in plan.released_seq_ids:
            self._seqs.pop(seq_id)
        for step in plan.steps:
            seq = self._seqs[step.seq_id]
            if seq.computed is None:
                seq.computed = step.start_position  # the prefix cache held the rest
            assert step.start_position == seq.computed, f"{step.seq_id}: position gap"
            for offset, token in enumerate(step.token_ids):
                position = step.start_position + offset
                if position < len(seq.tokens):
                    assert seq.tokens[position] == token, f"{step.seq_id}: wrong input"
                else:
                    seq.tokens.append(token)  # the token sampled last step (earlier stages)
            seq.computed += len(step.token_ids)
            if step.sample:
                token = next_token(seq.tokens[: seq.computed])
                if self.carries_tokens:
                    seq.tokens.append(token)
                    result.tokens.add(seq_id=step.seq_id, token_id=token, logprob=-1.0)
        return result


def start_pipelines(
    num_pipelines: int,
    pp: int = 1,
    tp: int = 1,
    hosts: list[str] | None = None,
    port: int = 0,
    **kwargs,
) -> list[StandinWorker]:
    """Stand-ins for every worker of `num_pipelines` pipelines, in ordinal order (worker i on
    hosts[i] when given, on `port`, default a free one each)."""
    workers = []
    try:
        for ordinal in range(num_pipelines * pp * tp):
            worker = StandinWorker(ordinal, pp, tp, **kwargs)
            workers.append(worker.start(hosts[ordinal] if hosts else "127.0.0.1", port))
    except BaseException:
        for worker in workers:
            worker.die()
        raise
    return workers
