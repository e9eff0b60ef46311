"""On a machine with two or more GPUs: tp = 2 and pp = 2 over NCCL (one process per GPU)
give the single-GPU runner's tokens and logprobs. Skipped elsewhere (CI has CPUs only; the
gloo pipelines of test_pipeline_vs_single.py cover the same code there).

Self-contained (no conftest fixtures), so that a bare GPU machine can run it with
`pytest --noconftest`.
"""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp
from plan_driver import PlanDriver
from tiny_models import make_tiny_checkpoint, random_prompts

from orca_proto.v1 import worker_pb2 as pb
from orca_worker.parallel.distributed import init_parallel
from orca_worker.parallel.topology import WorkerPlace, place_of
from orca_worker.runner import ModelRunner, RunnerConfig

NUM_BLOCKS = 48
BLOCK_SIZE = 4
LOGPROB_TOL = 1e-4

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")


def _runner(path: str, device: str, place: WorkerPlace | None = None, comm=None) -> ModelRunner:
    config = RunnerConfig(
        path,
        device=device,
        num_kv_blocks=NUM_BLOCKS,
        block_size=BLOCK_SIZE,
        place=place or WorkerPlace(),
    )
    return ModelRunner(config, comm)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, path: str, tp: int, pp: int, port: int, plans: list[bytes], out) -> None:
    place = place_of(rank, pp, tp)
    device = torch.device("cuda", rank)
    comm = init_parallel(place, f"127.0.0.1:{port}", device, timeout_s=60)
    runner = _runner(path, str(device), place, comm)
    runner.enter_step_thread()
    results = [runner.execute(pb.StepPlan.FromString(p)).SerializeToString() for p in plans]
    runner.close()
    out.put((rank, results))
    comm.close()


def _plans_and_reference(path: str) -> tuple[list[pb.StepPlan], list[pb.StepResult]]:
    """Chunked prefill mixed with decodes, three sequences, a release; run on one GPU."""
    ref = _runner(path, "cuda:0")
    driver = PlanDriver(ref)
    p0, p1, p2 = random_prompts((5, 13, 9), ref.model_config.vocab_size, seed=5)
    plans, results = [], []

    def step(work, released=()):
        plans.append(driver.plan(work, released))
        results.append(ref.execute(plans[-1]))
        assert results[-1].error == "", results[-1].error
        return {t.seq_id: t.token_id for t in results[-1].tokens}

    driver.add("s0", p0, logprobs=True, top_logprobs=3)
    driver.add("s1", p1, logprobs=True)
    last = step([("s0", p0, True), ("s1", p1[:6], False)])
    driver.add("s2", p2, logprobs=True)
    last = step([("s0", [last["s0"]], True), ("s1", p1[6:], True), ("s2", p2, True)])
    for k in range(4):
        seqs = ("s0", "s1") if k >= 2 else ("s0", "s1", "s2")
        last = step([(s, [last[s]], True) for s in seqs], ("s2",) if k == 2 else ())
    return plans, results


@pytest.mark.parametrize(("arch", "tp", "pp"), [("llama", 2, 1), ("llama", 1, 2), ("gpt2", 2, 1)])
def test_nccl_pipeline_matches_one_gpu(arch, tp, pp, tmp_path):
    path = str(make_tiny_checkpoint(arch, tmp_path / arch))
    plans, want = _plans_and_reference(path)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    raw = [p.SerializeToString() for p in plans]
    procs = [
        ctx.Process(target=_worker, args=(r, path, tp, pp, port, raw, out)) for r in range(tp * pp)
    ]
    for proc in procs:
        proc.start()
    try:
        got = dict(out.get(timeout=240) for _ in procs)
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    sampler = (pp - 1) * tp
    for rank in range(tp * pp):
        results = [pb.StepResult.FromString(r) for r in got[rank]]
        for mine, theirs in zip(results, want, strict=True):
            assert (mine.step_id, mine.error) == (theirs.step_id, "")
            if rank != sampler:
                assert not mine.tokens
                continue
            assert [t.token_id for t in mine.tokens] == [t.token_id for t in theirs.tokens]
            for a, b in zip(mine.tokens, theirs.tokens, strict=True):
                assert a.logprob == pytest.approx(b.logprob, abs=LOGPROB_TOL)
                assert [t.logprob for t in a.top_logprobs] == pytest.approx(
                    [t.logprob for t in b.top_logprobs], abs=LOGPROB_TOL
                )
