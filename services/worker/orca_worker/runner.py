"""The model runner: one model, one KV pool; executes StepPlans and returns StepResults."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from orca_kernels.dispatch import triton_available
from orca_proto.v1 import worker_pb2
from orca_worker.attention import AttentionBackend, AttentionMetadata, TorchAttentionBackend
from orca_worker.batch import BatchLimits, PreparedBatch, SequenceState, commit, prepare_batch
from orca_worker.config import DTYPE_NAMES, load_model_config, parse_token_ids
from orca_worker.cuda_graphs import DecodeGraphs
from orca_worker.errors import InvalidPlanError, ModelLoadError
from orca_worker.host_staging import HostStaging
from orca_worker.kv_cache import KVCachePool, attention_layers, bind_kv_cache, plan_num_blocks
from orca_worker.models.layers import use_fused_kernels
from orca_worker.parallel.distributed import ParallelComm
from orca_worker.parallel.stage import build_stage
from orca_worker.parallel.topology import WorkerPlace
from orca_worker.sampler import Sampler, SamplerOutput
from orca_worker.timing import StepTimer
from orca_worker.warmup import warmup_plans

log = logging.getLogger(__name__)

# A longer gap before a plan is a quiet spell, not a stall: StepTimings.waited_ms says 0.
MAX_WAIT_S = 1.0
# The RunnerConfig.kernels choices.
KERNELS = ("auto", "torch", "triton")


@dataclass
class RunnerConfig:
    """How to build a ModelRunner."""

    model_dir: str
    # "auto" takes config.json's dtype (float32 when it names none); else float32,
    # float16 or bfloat16.
    dtype: str = "auto"
    device: str = "cpu"
    block_size: int = 16
    # None: size the pool from kv_cache_memory_fraction (GPU) or a fixed budget (CPU,
    # see kv_cache.CPU_KV_BUDGET_BYTES).
    num_kv_blocks: int | None = None
    # Share of the GPU memory still free after the weights that the KV pool takes.
    kv_cache_memory_fraction: float = 0.9
    # "safetensors", or "random" to benchmark shapes from config.json alone.
    load_format: str = "safetensors"
    # Seeds random weights and the sampler's shared generator (requests without a seed).
    seed: int = 0
    # Where this worker sits in its pipeline; the default is a whole model in one process.
    place: WorkerPlace = field(default_factory=WorkerPlace)
    # Layers per pipeline stage (first stage first); None splits them evenly.
    pp_layers: tuple[int, ...] | None = None
    # "torch" (plain torch everywhere), "triton" (orca_kernels: paged attention, fused norms,
    # rotary and activations; sliding-window layers keep torch attention), or "auto":
    # triton on CUDA when Triton imports, torch otherwise.
    kernels: str = "auto"
    # Decode steps of up to this many sequences replay CUDA graphs (on CUDA with the Triton
    # kernels, in a single-process worker, no sliding window); 0 runs every step eagerly.
    cuda_graph_max_batch: int = 256
    # Before serving, run the warm-up plans (orca_worker.warmup) so that no request waits
    # for a kernel compile; on CUDA, in a single-process worker.
    warmup: bool = True


class ModelRunner:
    """Loads the model (this worker's shard of it), allocates the KV pool for its layers and
    KV heads, and runs one StepPlan at a time. With tp or pp > 1, `comm` is its pipeline's
    process group (see parallel.distributed.init_parallel); every worker of the pipeline
    must be given the same plans in the same order."""

    def __init__(self, config: RunnerConfig, comm: ParallelComm | None = None) -> None:
        _check_runner_config(config, comm)
        self.config = config
        self.place = config.place
        self.device = torch.device(config.device)
        self.model_config = mc = load_model_config(config.model_dir)
        self.dtype_name = _resolve_dtype(config.dtype, mc.dtype)
        dtype = getattr(torch, self.dtype_name)
        self.stage = build_stage(
            mc,
            config.model_dir,
            dtype,
            self.device,
            config.load_format,
            config.seed,
            self.place,
            config.pp_layers,
            comm,
        )
        self.model, self.layers = self.stage.model, self.stage.layers
        attn = attention_layers(self.model)
        num_kv_heads, head_dim = attn[0].num_kv_heads, attn[0].head_dim
        num_blocks = config.num_kv_blocks or plan_num_blocks(
            mc,
            config.block_size,
            dtype,
            self.device,
            config.kv_cache_memory_fraction,
            num_layers=len(attn),
            num_kv_heads=num_kv_heads,
        )
        if comm is not None:  # one pool size for the pipeline: the scheduler sees one number
            num_blocks = comm.pipeline_min(num_blocks)
        self.kv_pool = KVCachePool(
            len(attn), num_blocks, config.block_size, num_kv_heads, head_dim, dtype, self.device
        )
        self.kernels = resolve_kernels(config.kernels, self.device)
        bind_kv_cache(self.model, self.kv_pool, _attention_backend(self.kernels))
        if self.kernels == "triton":
            use_fused_kernels(self.model, mc.max_position_embeddings)
        self.distributed = comm is not None
        self.graphs = self._capture_graphs() if self._graphs_apply() else None
        # Set once the pipeline cannot run another plan (see PipelineBrokenError).
        self.broken: str | None = None
        self.limits = BatchLimits(
            mc.vocab_size, mc.max_position_embeddings, num_blocks, config.block_size
        )
        self.sampler = Sampler(seed=config.seed)
        self.staging = HostStaging(self.device)  # pinned buffers for the steps' inputs
        self.seqs: dict[str, SequenceState] = {}
        self._last_step_end: float | None = None  # for StepTimings.waited_ms
        if config.warmup and self.device.type == "cuda" and not self.distributed:
            self.warm_up()
        log.info(
            "model_loaded model=%s arch=%s dtype=%s device=%s pipeline=%d stage=%d tp_rank=%d "
            "layers=%d-%d kv_blocks=%d kv_bytes=%d kernels=%s",
            self.model_name,
            mc.architecture,
            self.dtype_name,
            self.device,
            self.place.pipeline,
            self.place.stage,
            self.place.tp_rank,
            self.layers.start,
            self.layers.stop - 1,
            num_blocks,
            self.kv_pool.kv_bytes,
            self.kernels,
        )

    @property
    def model_name(self) -> str:
        """The model directory's base name."""
        return Path(self.config.model_dir).resolve().name

    def info(self) -> worker_pb2.WorkerInfo:
        """Describe this worker: model, dtype, KV pool shape, limits, EOS ids, vocabulary and
        its place (pipeline, stage, TP rank, sizes)."""
        place = self.place
        return worker_pb2.WorkerInfo(
            model=self.model_name,
            dtype=self.dtype_name,
            num_kv_blocks=self.kv_pool.num_blocks,
            block_size=self.kv_pool.block_size,
            max_model_len=self.model_config.max_position_embeddings,
            eos_token_ids=list(
                _eos_token_ids(self.config.model_dir, self.model_config.eos_token_ids)
            ),
            stage=place.stage,
            tp_rank=place.tp_rank,
            vocab_size=self.model_config.vocab_size,
            pipeline=place.pipeline,
            pp_size=place.pp_size,
            tp_size=place.tp_size,
        )

    def enter_step_thread(self) -> None:
        """Call once on the thread that will run `execute` (binds its CUDA device)."""
        if self.device.type == "cuda":
            # A bare "cuda" (one GPU made visible per worker) means the first visible GPU;
            # set_device needs an index.
            torch.cuda.set_device(self.device.index if self.device.index is not None else 0)

    def execute(
        self, plan: worker_pb2.StepPlan, refusal: str | None = None
    ) -> worker_pb2.StepResult:
        """Run one plan. Never raises: a bad plan or a failed step comes back as
        StepResult.error, with the worker's sequence table left as it was. Only the sampling
        worker (last stage, TP rank 0) returns tokens; the others return the step id, timings
        and any error.

        `refusal` fails the plan on purpose (draining). In a pipeline only the first stage's
        refusals count: they reach the later stages in the step header, so that every stage
        drops the plan alike (a later stage refusing alone would leave the earlier ones
        tracking sequences it never saw).

        The result's `timings.waited_ms` is how long this worker was idle before the plan."""
        start = time.perf_counter()
        waited_s = start - self._last_step_end if self._last_step_end is not None else 0.0
        try:
            result = self._execute(plan, refusal)
        finally:
            self._last_step_end = time.perf_counter()
        result.timings.waited_ms = waited_s * 1000.0 if waited_s <= MAX_WAIT_S else 0.0
        return result

    @torch.inference_mode()
    def _execute(self, plan: worker_pb2.StepPlan, refusal: str | None) -> worker_pb2.StepResult:
        result = worker_pb2.StepResult(step_id=plan.step_id)
        if self.broken is not None:
            result.error = self.broken
            return result
        timer = StepTimer(self.device)
        batch, error = None, refusal if self.place.is_first_stage else None
        if error is None:
            try:
                batch = prepare_batch(plan, self.seqs, self.limits, self.device, self.staging)
            except InvalidPlanError as exc:
                error = f"invalid plan: {exc}"
            except Exception as exc:  # still this worker's own verdict: no collective yet
                log.exception("step_failed step_id=%d", plan.step_id)
                error = f"step failed: {type(exc).__name__}: {exc}"
        timer.mark()
        graph_size = None
        if self.graphs is not None and batch is not None and error is None:
            graph_size = self.graphs.holds(batch)
        try:
            if graph_size is not None:  # a decode step: one graph replay to the logits
                logits = self.graphs.run(batch, graph_size)
                timer.mark()
                sampled = self.sampler(logits, batch.sampled_states)
            else:
                hidden, error = self.stage.forward(plan.step_id, batch, error)
                timer.mark()
                sampled = self._sample(batch, hidden) if error is None else None
            timer.mark()
        except Exception as exc:  # a failed forward must not take the worker down
            log.exception("step_failed step_id=%d", plan.step_id)
            result.error = f"step failed: {type(exc).__name__}: {exc}"
            if self.distributed:  # its peers may be stuck in a collective: stop here
                self.broken = f"pipeline broken: {result.error}"
                result.error = self.broken
            return result
        if error is not None:
            result.error = error
            return result
        assert batch is not None
        commit(batch, self.seqs, sampled.token_ids if sampled is not None else None)
        if sampled is not None:
            self._fill_tokens(result, batch, sampled)
        prepare_ms, forward_ms, sample_ms = timer.elapsed_ms()
        result.timings.prepare_ms = prepare_ms
        result.timings.forward_ms = forward_ms
        result.timings.sample_ms = sample_ms
        return result

    def warm_up(self) -> float:
        """Run the warm-up plans (compiling what the first real steps would); seconds taken.
        Raises if a plan fails: a worker that cannot run them cannot serve."""
        start = time.perf_counter()
        limits = self.limits
        for plan in warmup_plans(
            limits.num_kv_blocks, limits.block_size, limits.max_model_len, limits.vocab_size
        ):
            result = self.execute(plan)
            if result.error:
                raise RuntimeError(f"warm-up step {plan.step_id} failed: {result.error}")
        if self.seqs:
            raise RuntimeError(f"warm-up left sequences behind: {sorted(self.seqs)}")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        log.info("warmup_done seconds=%.2f", seconds)
        return seconds

    def decode_logits(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """Float32 logits of every row: the forward a decode graph captures (single-process
        worker, so the whole model and every row sampled)."""
        model = self.model
        carry = model.embed(input_ids, positions)
        carry = model.run_layers(carry, positions, meta, self.layers)
        return model.compute_logits(model.finish(carry)).float()

    def _graphs_apply(self) -> bool:
        """Whether decode steps run as CUDA graphs here (see RunnerConfig.cuda_graph_max_batch)."""
        return (
            self.config.cuda_graph_max_batch > 0
            and self.device.type == "cuda"
            and self.kernels == "triton"
            and not self.distributed
            and all(w is None for w in self.model_config.sliding_windows)
        )

    @torch.inference_mode()
    def _capture_graphs(self) -> DecodeGraphs | None:
        """Capture the decode graphs; None (every step eager, with a warning) if capture
        fails: graphs only save launch time, the worker serves without them."""
        torch.cuda.set_device(self.device.index if self.device.index is not None else 0)
        max_blocks = -(-self.model_config.max_position_embeddings // self.kv_pool.block_size)
        try:
            return DecodeGraphs(
                self.decode_logits,
                min(self.config.cuda_graph_max_batch, self.kv_pool.num_blocks),
                max_blocks,
                self.kv_pool.block_size,
                self.device,
            )
        except Exception:
            log.warning("cuda_graphs_failed: decode steps run eagerly", exc_info=True)
            torch.cuda.synchronize(self.device)
            return None

    def close(self) -> None:
        """Finish this worker's part of the pipeline's last step (its pending sends)."""
        if self.broken is None:
            self.stage.close()

    @property
    def num_active_seqs(self) -> int:
        """Sequences whose state this worker caches."""
        return len(self.seqs)

    def _sample(self, batch: PreparedBatch, hidden: torch.Tensor | None) -> SamplerOutput | None:
        """Tokens of the sampled steps, on the sampling worker; None elsewhere. Every TP rank
        of the last stage computes the logits (the LM head gathers them across ranks)."""
        if hidden is None or not batch.sampled_states:
            return SamplerOutput([], [], []) if self.place.samples else None
        # float32 logits: the sampler's softmax and logprobs must not lose precision in bf16.
        logits = self.model.compute_logits(hidden[batch.sample_indices]).float()
        if not self.place.samples:
            return None
        return self.sampler(logits, batch.sampled_states)

    @staticmethod
    def _fill_tokens(
        result: worker_pb2.StepResult, batch: PreparedBatch, sampled: SamplerOutput
    ) -> None:
        for i, seq_id in enumerate(batch.sampled_seq_ids):
            params = batch.sampled_states[i].params
            token = result.tokens.add(seq_id=seq_id, token_id=sampled.token_ids[i])
            if params.logprobs and sampled.logprobs[i] is not None:
                token.logprob = sampled.logprobs[i]
            for token_id, logprob in sampled.top_logprobs[i][: params.top_logprobs]:
                token.top_logprobs.add(token_id=token_id, logprob=logprob)


def _check_runner_config(config: RunnerConfig, comm: ParallelComm | None) -> None:
    """Reject settings no pool can be built from, before any memory is spent."""
    if config.place.world_size > 1 and comm is None:
        raise ModelLoadError("tp or pp > 1 needs the pipeline's process group (comm)")
    if comm is not None and comm.place != config.place:
        raise ModelLoadError(f"comm is for {comm.place}, the runner for {config.place}")
    if config.kernels not in KERNELS:
        raise ModelLoadError(f"unknown kernels {config.kernels!r}; expected one of {KERNELS}")
    if config.cuda_graph_max_batch < 0:
        raise ModelLoadError(
            f"cuda_graph_max_batch must be 0 (off) or positive, got {config.cuda_graph_max_batch}"
        )
    if config.block_size < 1:
        raise ModelLoadError(f"block_size must be positive, got {config.block_size}")
    if config.num_kv_blocks is not None and config.num_kv_blocks < 1:
        raise ModelLoadError(f"num_kv_blocks must be positive, got {config.num_kv_blocks}")
    if not 0 < config.kv_cache_memory_fraction <= 1:
        raise ModelLoadError(
            f"kv_cache_memory_fraction must be in (0, 1], got {config.kv_cache_memory_fraction}"
        )


def resolve_kernels(kernels: str, device: torch.device) -> str:
    """The kernels a worker runs: "auto" is "triton" on CUDA when Triton imports, else
    "torch"; "torch" and "triton" are kept as asked."""
    if kernels != "auto":
        return kernels
    return "triton" if device.type == "cuda" and triton_available() else "torch"


def _attention_backend(kernels: str) -> AttentionBackend:
    """The attention backend the `kernels` setting names."""
    if kernels == "triton":
        from orca_worker.triton_attention import TritonAttentionBackend

        return TritonAttentionBackend()
    return TorchAttentionBackend()


def _resolve_dtype(requested: str, config_dtype: str | None) -> str:
    """The dtype name to load in: "auto" follows config.json (float32 if it names none)."""
    if requested == "auto":
        return config_dtype or "float32"
    if requested not in DTYPE_NAMES:
        raise ModelLoadError(f"unsupported dtype {requested!r}; expected auto or {DTYPE_NAMES}")
    return requested


def _eos_token_ids(model_dir: str, from_config: tuple[int, ...]) -> tuple[int, ...]:
    """EOS ids from generation_config.json, else config.json; (-1,) when neither has one."""
    path = Path(model_dir) / "generation_config.json"
    if path.is_file():
        try:
            ids = parse_token_ids(json.loads(path.read_text()).get("eos_token_id"))
        except (json.JSONDecodeError, TypeError, ValueError):
            ids = ()
        if ids:
            return ids
    return from_config or (-1,)
