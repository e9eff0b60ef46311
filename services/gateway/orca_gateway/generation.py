"""One client request in flight: its choices' chunks turned into text updates.

Every choice (prompt x n) is its own StreamRequest; all of a request's choices share one
queue that the output reader fills. For each chunk: drop token indexes already seen,
detokenize incrementally, match stop strings (a match finishes the choice and tells the
scheduler to STOP), and hand back a ChoiceUpdate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from opentelemetry import trace

from orca_gateway.detokenizer import IncrementalDetokenizer
from orca_gateway.errors import GenerationFailed
from orca_gateway.log import log_event
from orca_gateway.metrics import GatewayMetrics
from orca_gateway.output_reader import OutputReader
from orca_gateway.stop_strings import StopStringMatcher
from orca_gateway.submit import Kind, Submitter
from orca_gateway.tokenizer import Tokenizer
from orca_proto.v1 import stream_pb2, worker_pb2


@dataclass
class ChoiceUpdate:
    """New output of one choice."""

    index: int
    # New text, stop strings removed.
    text: str
    # New token ids and, when asked for, their logprobs (one SampledToken per id).
    token_ids: list[int]
    logprobs: list[worker_pb2.SampledToken]
    # Set on the choice's last update: "stop", "length", "abort" or "error".
    finish_reason: str | None = None
    # Why, when finish_reason is "error".
    error: str = ""


@dataclass
class _Choice:
    index: int
    request_id: str
    detokenizer: IncrementalDetokenizer
    stops: StopStringMatcher
    num_tokens: int = 0
    finish_reason: str | None = None
    last_token_at: float | None = None


@dataclass
class ChoiceResult:
    """A finished choice, collected whole (non-streaming responses)."""

    index: int
    text: str = ""
    num_tokens: int = 0
    logprobs: list[worker_pb2.SampledToken] = field(default_factory=list)
    finish_reason: str | None = None


class Generation:
    """The choices of one request, from submission until the last is finished or closed."""

    def __init__(
        self,
        request_id: str,
        requests: list[stream_pb2.StreamRequest],
        stop: list[str],
        prompt_tokens: int,
        tokenizer: Tokenizer,
        reader: OutputReader,
        submitter: Submitter,
        metrics: GatewayMetrics,
    ) -> None:
        self.request_id = request_id
        self._span: trace.Span | None = None  # the request's trace span, ended by close()
        self.requests = requests
        self.prompt_tokens = prompt_tokens
        self._reader = reader
        self._submitter = submitter
        self._metrics = metrics
        self._queue: asyncio.Queue = asyncio.Queue()
        self._choices = [
            _Choice(
                index=i,
                request_id=r.request_id,
                detokenizer=IncrementalDetokenizer(tokenizer.decode, r.prompt_token_ids),
                stops=StopStringMatcher(stop),
            )
            for i, r in enumerate(requests)
        ]
        self._started_at = time.monotonic()
        self._first_token_at: float | None = None
        self._closed = False

    @property
    def finished(self) -> bool:
        """Whether every choice has finished."""
        return all(c.finish_reason is not None for c in self._choices)

    @property
    def completion_tokens(self) -> int:
        """Tokens generated so far, over all choices."""
        return sum(c.num_tokens for c in self._choices)

    async def submit(self) -> None:
        """Register every choice with the output reader, then XADD the requests."""
        for choice in self._choices:
            self._reader.register(choice.request_id, self._queue, choice.index)
        try:
            await self._submitter.submit(self.requests)
        except Exception:
            self._closed = True  # Redis refused the write: nothing to cancel
            for choice in self._choices:
                self._reader.unregister(choice.request_id)
            raise

    async def updates(self) -> AsyncIterator[ChoiceUpdate]:
        """Updates in arrival order, until every choice has finished."""
        while not self.finished:
            index, chunk = await self._queue.get()
            update = self._apply(self._choices[index], chunk)
            if update is not None:
                yield update

    async def collect(self) -> list[ChoiceResult]:
        """Run to the end and return each choice whole, in index order."""
        results = [ChoiceResult(index=c.index) for c in self._choices]
        async for update in self.updates():
            result = results[update.index]
            result.text += update.text
            result.num_tokens += len(update.token_ids)
            result.logprobs.extend(update.logprobs)
            if update.finish_reason is not None:
                result.finish_reason = update.finish_reason
                if update.finish_reason == "error":
                    raise GenerationFailed(update.error or "generation failed")
        return results

    def attach_span(self, span: trace.Span) -> None:
        """The request's trace span, to end (with the outcome) when this closes."""
        self._span = span

    def close(self) -> None:
        """Stop reading; CANCEL every unfinished choice (client gone or request failed).

        Idempotent, and awaits nothing, so it is safe in `finally` while being cancelled.
        """
        if self._closed:
            return
        self._closed = True
        unfinished = [c.request_id for c in self._choices if c.finish_reason is None]
        for choice in self._choices:
            self._reader.unregister(choice.request_id)
        elapsed_s = time.monotonic() - self._started_at
        if unfinished:
            self._submitter.control_soon(unfinished, Kind.CANCEL)
            log_event(
                "request_cancelled",
                request_id=self.request_id,
                cancelled_choices=len(unfinished),
                elapsed_s=f"{elapsed_s:.3f}",
            )
        else:
            self._metrics.e2e_request_latency.observe(elapsed_s)
            log_event(
                "request_finished",
                request_id=self.request_id,
                finish=",".join(c.finish_reason or "" for c in self._choices),
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.completion_tokens,
                e2e_s=f"{elapsed_s:.3f}",
            )
        self._metrics.generation_tokens.inc(self.completion_tokens)
        if self._span is not None:
            self._span.set_attribute("orca.completion_tokens", self.completion_tokens)
            self._span.set_attribute(
                "orca.finish_reasons",
                ",".join(c.finish_reason or "cancelled" for c in self._choices),
            )
            self._span.end()

    def _apply(self, choice: _Choice, chunk: stream_pb2.TokenChunk) -> ChoiceUpdate | None:
        if choice.finish_reason is not None:
            return None
        token_ids = list(chunk.token_ids)
        logprobs = list(chunk.logprobs)
        already_seen = choice.num_tokens - chunk.first_token_index
        if already_seen > 0:  # a chunk written again after a scheduler restart
            token_ids, logprobs = token_ids[already_seen:], logprobs[already_seen:]
        elif already_seen < 0:
            log_event(
                "token_gap",
                request_id=choice.request_id,
                expected=choice.num_tokens,
                got=chunk.first_token_index,
            )
        if token_ids:
            self._note_tokens(choice, len(token_ids))
        text = choice.detokenizer.push(token_ids) if token_ids else ""
        if chunk.finished:
            text += choice.detokenizer.flush()
        text, stopped = choice.stops.feed(text, final=chunk.finished)
        finish_reason = None
        if stopped:
            finish_reason = "stop"
            if not chunk.finished:
                self._submitter.control_soon([choice.request_id], Kind.STOP)
        elif chunk.finished:
            finish_reason = chunk.finish_reason or "stop"
        if finish_reason is not None:
            choice.finish_reason = finish_reason
            self._reader.unregister(choice.request_id)
        elif not text and not token_ids:
            return None
        return ChoiceUpdate(
            index=choice.index,
            text=text,
            token_ids=token_ids,
            logprobs=logprobs,
            finish_reason=finish_reason,
            error=chunk.error if finish_reason == "error" else "",
        )

    def _note_tokens(self, choice: _Choice, count: int) -> None:
        now = time.monotonic()
        if self._first_token_at is None:
            self._first_token_at = now
            self._metrics.time_to_first_token.observe(now - self._started_at)
        if choice.last_token_at is not None:
            per_token_s = (now - choice.last_token_at) / count
            for _ in range(count):
                self._metrics.inter_token_latency.observe(per_token_s)
        choice.last_token_at = now
        choice.num_tokens += count
