"""The offline engine: `LLM(model=DIR).generate(prompts, SamplingParams(...))`.

It runs the same scheduler core as the scheduler service against an in-process worker
(`InProcessExecutor`): one plan per model iteration, iteration-level batching.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orca.in_process_executor import InProcessExecutor
from orca.sampling_params import SamplingParams
from orca_proto.v1 import worker_pb2
from orca_scheduler.core.config import SchedulerConfig
from orca_scheduler.core.outputs import SequenceUpdate
from orca_scheduler.core.request import Request
from orca_scheduler.core.scheduler import Scheduler
from orca_worker.runner import RunnerConfig


class InvalidPromptError(ValueError):
    """A prompt is empty, or holds a token id outside the model's vocabulary."""


@dataclass
class RequestOutput:
    """The completion of one prompt."""

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str | None = None
    finish_reason: str | None = None
    # One dict per generated token: the sampled token's logprob plus the top-n alternatives
    # (None unless SamplingParams.logprobs was set).
    logprobs: list[dict[int, float]] | None = None


class LLM:
    """An offline engine over one model on one device."""

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        device: str = "cpu",
        max_num_seqs: int = 256,
        max_num_batched_tokens: int = 8192,
        num_kv_blocks: int | None = None,
        block_size: int = 16,
        kv_policy: str = "paged",
        enable_prefix_caching: bool = True,
        kv_cache_memory_fraction: float = 0.9,
        load_format: str = "safetensors",
        seed: int = 0,
        kernels: str = "auto",
        cuda_graph_max_batch: int = 256,
        batching: str = "iteration",
        overlap: bool = False,
    ) -> None:
        self.model_dir = Path(model)
        self.executor = InProcessExecutor(
            RunnerConfig(
                model_dir=str(model),
                dtype=dtype,
                device=device,
                block_size=block_size,
                num_kv_blocks=num_kv_blocks,
                kv_cache_memory_fraction=kv_cache_memory_fraction,
                load_format=load_format,
                seed=seed,
                kernels=kernels,
                cuda_graph_max_batch=cuda_graph_max_batch,
            )
        )
        info = self.executor.info()
        self.worker_info = info
        self.scheduler = Scheduler(
            SchedulerConfig(
                max_num_seqs=max_num_seqs,
                max_num_batched_tokens=max_num_batched_tokens,
                block_size=info.block_size,
                num_kv_blocks=info.num_kv_blocks,
                max_model_len=info.max_model_len,
                kv_policy=kv_policy,
                enable_prefix_caching=enable_prefix_caching,
                batching=batching,
                overlap=overlap,
            ),
            eos_token_ids=list(info.eos_token_ids),
        )
        self.tokenizer = _load_tokenizer(self.model_dir)
        self._vocab_size = info.vocab_size
        self._ids = itertools.count()
        # Plans started and not applied yet, oldest first (two with overlap).
        self._pending: deque[Future[worker_pb2.StepResult]] = deque()
        self._step_thread: ThreadPoolExecutor | None = None  # runs plans (overlap only)

    def generate(
        self,
        prompts: str | Sequence[str] | None = None,
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        prompt_token_ids: Sequence[Sequence[int]] | None = None,
    ) -> list[RequestOutput]:
        """Complete every prompt (texts or token id lists); outputs are in prompt order."""
        token_lists = self._encode(prompts, prompt_token_ids)
        params = _per_prompt(sampling_params, len(token_lists))
        requests = [self._make_request(ids, p) for ids, p in zip(token_lists, params, strict=True)]
        # Validate everything before the first request joins, so a bad prompt leaves the
        # engine as it was.
        for request in requests:
            self.scheduler.validate_request(request)
        for request in requests:
            self.scheduler.add_request(request)
        outputs = {
            r.request_id: RequestOutput(r.request_id, list(r.prompt_token_ids)) for r in requests
        }
        for request, p in zip(requests, params, strict=True):
            if p.logprobs is not None:
                outputs[request.request_id].logprobs = []
        self._run_until_done(outputs)
        for out in outputs.values():
            if self.tokenizer is not None:
                out.text = self.tokenizer.decode(out.token_ids, skip_special_tokens=True)
        return [outputs[r.request_id] for r in requests]

    def reconfigure(self, **changes: Any) -> None:
        """Replace the scheduler by one with `changes` to its SchedulerConfig (batch limits,
        policies) over the same KV pool; only between runs (ValueError while requests are
        unfinished). Sequences the workers still hold are released first."""
        if self.scheduler.has_unfinished():
            raise ValueError("reconfigure needs an idle engine: requests are unfinished")
        while self._pending:  # steps run ahead of a stop
            self.scheduler.update(self._pending.popleft().result())
        while (plan := self.scheduler.schedule()) is not None:  # release-only plans
            self.scheduler.update(self.executor.execute(plan))
        config = dataclasses.replace(self.scheduler.config, **changes)
        self.scheduler = Scheduler(config, eos_token_ids=self.scheduler.eos_token_ids)

    def add_request(
        self, prompt_token_ids: Sequence[int], sampling_params: SamplingParams | None = None
    ) -> str:
        """Queue one request (token ids) for `step` to serve; returns its request id.
        InvalidPromptError or ValueError for a request the engine cannot take."""
        (token_ids,) = self._encode(None, [prompt_token_ids])
        request = self._make_request(token_ids, sampling_params or SamplingParams())
        self.scheduler.validate_request(request)
        self.scheduler.add_request(request)
        return request.request_id

    def has_unfinished(self) -> bool:
        """Whether any added request is still waiting or running."""
        return self.scheduler.has_unfinished()

    def step(self) -> list[SequenceUpdate]:
        """Run one iteration over the requests added so far (none: nothing to run) and
        return what each request in it gained; with `add_request`, this serves requests
        that arrive over time (an online loop), as the services' scheduler does."""
        if not self.scheduler.has_unfinished() and not self._pending:
            return []
        self._launch()
        updates = self._collect()
        self._launch()  # the next plan starts before the caller handles these updates
        return updates

    def close(self) -> None:
        """Stop the step thread (overlap); the engine serves no more after this."""
        if self._step_thread is not None:
            self._step_thread.shutdown(wait=True)
            self._step_thread = None

    def _launch(self) -> None:
        """Schedule every plan the scheduler gives now (one, or with overlap a second whose
        decodes take the first's sampled tokens) and start it: with overlap on the step
        thread, which runs it while this thread schedules and folds around it."""
        while (plan := self.scheduler.schedule()) is not None:
            if self.scheduler.config.overlap:
                if self._step_thread is None:
                    self._step_thread = ThreadPoolExecutor(
                        max_workers=1,
                        thread_name_prefix="orca-step",
                        initializer=self.executor.runner.enter_step_thread,
                    )
                self._pending.append(self._step_thread.submit(self.executor.execute, plan))
            else:
                done: Future[worker_pb2.StepResult] = Future()
                done.set_result(self.executor.execute(plan))
                self._pending.append(done)

    def _collect(self) -> list[SequenceUpdate]:
        """Wait for the oldest started plan and apply its result."""
        if not self._pending:
            raise RuntimeError("scheduler has unfinished requests but produced no plan")
        return self.scheduler.update(self._pending.popleft().result())

    def _run_until_done(self, outputs: dict[str, RequestOutput]) -> None:
        """The iteration loop: start plans (two ahead with overlap), apply the oldest's
        result, fold its tokens into the outputs."""
        while self.scheduler.has_unfinished() or self._pending:
            self._launch()
            for update in self._collect():
                out = outputs[update.request_id]
                out.token_ids.extend(update.new_token_ids)
                if out.logprobs is not None:
                    out.logprobs.extend(_logprob_dict(t) for t in update.new_logprobs)
                if update.finished:
                    out.finish_reason = update.finish_reason

    def _encode(
        self,
        prompts: str | Sequence[str] | None,
        prompt_token_ids: Sequence[Sequence[int]] | None,
    ) -> list[list[int]]:
        if (prompts is None) == (prompt_token_ids is None):
            raise InvalidPromptError("give exactly one of prompts or prompt_token_ids")
        if prompt_token_ids is not None:
            token_lists = [list(ids) for ids in prompt_token_ids]
        else:
            if self.tokenizer is None:
                raise InvalidPromptError(
                    f"{self.model_dir} has no tokenizer: pass prompt_token_ids"
                )
            texts = [prompts] if isinstance(prompts, str) else list(prompts)
            token_lists = [self.tokenizer.encode(t) for t in texts]
        for i, ids in enumerate(token_lists):
            if not ids:
                raise InvalidPromptError(f"prompt {i} is empty")
            bad = [t for t in ids if not 0 <= t < self._vocab_size]
            if bad:
                raise InvalidPromptError(
                    f"prompt {i} has token id {bad[0]} outside the vocabulary [0, {self._vocab_size})"
                )
        return token_lists

    def _make_request(self, token_ids: list[int], params: SamplingParams) -> Request:
        return Request(
            request_id=f"req-{next(self._ids)}",
            prompt_token_ids=token_ids,
            sampling=to_proto_sampling(params),
            max_tokens=params.max_tokens,
            stop_token_ids=frozenset(params.stop_token_ids),
            ignore_eos=params.ignore_eos,
        )


def to_proto_sampling(params: SamplingParams) -> worker_pb2.SamplingParams:
    """The worker's view of a request's sampling parameters."""
    proto = worker_pb2.SamplingParams(
        temperature=params.temperature,
        top_k=max(params.top_k, 0),
        top_p=params.top_p,
        min_p=params.min_p,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        repetition_penalty=params.repetition_penalty,
        logprobs=params.logprobs is not None,
        top_logprobs=params.logprobs or 0,
    )
    if params.seed is not None:
        proto.seed = params.seed
    return proto


def _per_prompt(
    sampling_params: SamplingParams | Sequence[SamplingParams] | None, n: int
) -> list[SamplingParams]:
    if sampling_params is None:
        return [SamplingParams() for _ in range(n)]
    if isinstance(sampling_params, SamplingParams):
        return [sampling_params] * n
    params = list(sampling_params)
    if len(params) != n:
        raise ValueError(f"got {len(params)} SamplingParams for {n} prompts")
    return params


def _logprob_dict(token: worker_pb2.SampledToken) -> dict[int, float]:
    entry = {alt.token_id: alt.logprob for alt in token.top_logprobs}
    entry[token.token_id] = token.logprob
    return entry


def _load_tokenizer(model_dir: Path):
    """The model's HF tokenizer, or None when the directory has none (token ids only)."""
    if (
        not (model_dir / "tokenizer.json").exists()
        and not (model_dir / "tokenizer_config.json").exists()
    ):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)
