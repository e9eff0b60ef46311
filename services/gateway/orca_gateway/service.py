"""The request path that HTTP and gRPC share: model check, readiness, context length,
admission, submission; and the resources it needs (tokenizer, Redis, reader, metrics)."""

from __future__ import annotations

import time

from opentelemetry import trace
from redis.asyncio import BlockingConnectionPool, Redis

from orca_gateway.config import GatewayConfig
from orca_gateway.errors import ContextLengthExceeded, ModelNotFound, NotReady, Overloaded
from orca_gateway.generation import Generation
from orca_gateway.load import LoadMonitor
from orca_gateway.log import log_event
from orca_gateway.metrics import GatewayMetrics
from orca_gateway.output_reader import OutputReader
from orca_gateway.params import GenerationParams
from orca_gateway.submit import Submitter
from orca_gateway.tokenizer import Tokenizer
from orca_proto.redis_streams import LoadReport
from orca_proto.tracing import context_from_traceparent, traceparent_of, tracer
from orca_proto.v1 import stream_pb2

# Seconds a plain Redis command may take before the request fails with 503.
REDIS_TIMEOUT_S = 5.0
# Connections of the request path (admission reads, XADDs, Controls) to Redis.
REDIS_MAX_CONNECTIONS = 64
# max_tokens when neither the request nor the model gives a bound.
FALLBACK_MAX_TOKENS = 16


class GatewayService:
    """Everything a request needs, shared by the HTTP app and the gRPC servicer."""

    def __init__(self, config: GatewayConfig, tokenizer: Tokenizer) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.model_name = config.model_name
        self.metrics = GatewayMetrics()
        # Requests wait for a free connection instead of failing when all are busy.
        self._redis = Redis.from_pool(
            BlockingConnectionPool.from_url(
                config.redis_url,
                max_connections=REDIS_MAX_CONNECTIONS,
                timeout=REDIS_TIMEOUT_S,
                socket_timeout=REDIS_TIMEOUT_S,
                socket_connect_timeout=REDIS_TIMEOUT_S,
            )
        )
        # The reader blocks in XREAD: its own client, with a timeout beyond the block.
        self._reader_redis = Redis.from_url(
            config.redis_url,
            socket_timeout=config.reader_block_ms / 1000 + REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
        )
        self.reader = OutputReader(self._reader_redis, block_ms=config.reader_block_ms)
        self.submitter = Submitter(self._redis, self.reader)
        self.loads = LoadMonitor(self._redis, config.load_stale_after_s, config.load_cache_s)

    @classmethod
    def from_config(cls, config: GatewayConfig) -> GatewayService:
        """Load the model folder's tokenizer and build the service (no I/O to Redis yet)."""
        return cls(config, Tokenizer.load(config.model))

    async def start(self) -> None:
        """Start the output reader (on the running loop)."""
        self.reader.start()

    async def stop(self) -> None:
        """Stop reading, let pending Controls go out, close the Redis clients."""
        await self.reader.stop()
        await self.submitter.drain()
        await self._redis.aclose()
        await self._reader_redis.aclose()

    def check_model(self, requested: str | None) -> None:
        """ModelNotFound unless `requested` is the served name (empty means the served one)."""
        if requested and requested != self.model_name:
            raise ModelNotFound(requested, self.model_name)

    async def load_report(self) -> LoadReport | None:
        """The scheduler's latest load report, or None (also while Redis is down)."""
        try:
            return await self.loads.read()
        except Exception:  # /v1/models must answer even while Redis is down
            return None

    async def max_model_len(self, report: LoadReport | None = None) -> int:
        """The context length the scheduler reports, else the model config's."""
        report = report or await self.load_report()
        if report is not None and report.max_model_len > 0:
            return report.max_model_len
        return self.tokenizer.max_position_embeddings

    async def generate(
        self,
        request_id: str,
        prompts: list[list[int]],
        params: GenerationParams,
        *,
        default_max_tokens: int | None,
        prompt_param: str,
        traceparent: str = "",
    ) -> Generation:
        """Admit and submit one request (a StreamRequest per prompt x n); the caller reads
        the returned Generation's updates and must close() it."""
        readiness = await self.loads.readiness()
        if not readiness.ready:
            raise NotReady(f"Not ready: {readiness.reason}.")
        report = readiness.report
        # The request's span: a child of the caller's traceparent; the scheduler's spans of
        # this request become its children through the StreamRequest's traceparent.
        span = tracer().start_span(
            "orca.request",
            context=context_from_traceparent(traceparent),
            kind=trace.SpanKind.SERVER,
            attributes={"orca.request_id": request_id, "orca.n": params.n},
        )
        traceparent = traceparent_of(span) or traceparent
        try:
            return await self._submit(
                request_id, prompts, params, report, default_max_tokens, prompt_param,
                traceparent, span,
            )  # fmt: skip
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)[:200]))
            span.end()
            raise

    async def _submit(
        self,
        request_id: str,
        prompts: list[list[int]],
        params: GenerationParams,
        report,
        default_max_tokens: int | None,
        prompt_param: str,
        traceparent: str,
        span: trace.Span,
    ) -> Generation:
        """generate()'s work once the service is ready, under the request's span."""
        max_len = report.max_model_len or self.tokenizer.max_position_embeddings
        arrival = time.time()
        requests = []
        for p, prompt in enumerate(prompts):
            max_tokens = _max_tokens(
                len(prompt), params.max_tokens, default_max_tokens, max_len, prompt_param
            )
            for i in range(params.n):
                requests.append(
                    stream_pb2.StreamRequest(
                        request_id=f"{request_id}-{p * params.n + i}",
                        prompt_token_ids=prompt,
                        sampling=params.sampling(i),
                        max_tokens=max_tokens,
                        stop_token_ids=params.stop_token_ids,
                        ignore_eos=params.ignore_eos,
                        priority=0,
                        arrival_time_unix=arrival,
                        traceparent=traceparent,
                        model=self.model_name,
                    )
                )
        if report.num_waiting >= self.config.max_queue_len:
            raise Overloaded(
                f"The server is overloaded ({report.num_waiting} requests waiting); "
                f"retry in {self.config.retry_after_s} s.",
                retry_after_s=self.config.retry_after_s,
            )
        prompt_tokens = sum(len(p) for p in prompts)
        generation = Generation(
            request_id,
            requests,
            stop=params.stop,
            prompt_tokens=prompt_tokens,
            tokenizer=self.tokenizer,
            reader=self.reader,
            submitter=self.submitter,
            metrics=self.metrics,
        )
        try:
            await generation.submit()
        except BaseException:
            generation.close()  # cancelled mid-write: CANCEL what may have gone out
            raise
        generation.attach_span(span)  # from here on close() ends it
        self.metrics.prompt_tokens.inc(prompt_tokens)
        span.set_attribute("orca.prompt_tokens", prompt_tokens)
        log_event(
            "request_submitted",
            request_id=request_id,
            choices=len(requests),
            prompt_tokens=prompt_tokens,
            max_tokens=requests[0].max_tokens,
            trace=traceparent or None,
        )
        return generation


def _max_tokens(
    prompt_len: int, requested: int | None, default: int | None, max_len: int, prompt_param: str
) -> int:
    """The max_tokens of one prompt's choices, or ContextLengthExceeded."""
    if max_len and prompt_len >= max_len:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {max_len} tokens, but the prompt has "
            f"{prompt_len} tokens.",
            param=prompt_param,
        )
    room = max_len - prompt_len if max_len else None
    if requested is not None:
        if room is not None and requested > room:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {max_len} tokens; the prompt has "
                f"{prompt_len} tokens and max_tokens is {requested}.",
                param="max_tokens",
            )
        return requested
    if default is None:
        return room if room is not None else FALLBACK_MAX_TOKENS
    return min(default, room) if room is not None else default
