"""tp x pp pipelines of real `orca-worker` processes (gloo on CPU) against the
single-process ModelRunner: the same plans must give the same greedy tokens and logprobs,
every worker must answer every plan, and a failed step must fail everywhere without
stalling the pipeline.
"""

from __future__ import annotations

import asyncio

import pytest
from pipeline_harness import Pipeline, PipelineClient
from plan_driver import PlanDriver
from tiny_models import random_prompts

from orca_proto.v1 import worker_pb2 as pb
from orca_worker.parallel.stage import PEER_FAILED, UPSTREAM_FAILED
from orca_worker.runner import ModelRunner, RunnerConfig

NUM_BLOCKS = 48
BLOCK_SIZE = 4
LOGPROB_TOL = 1e-4
WORKER_FLAGS = ("--num-kv-blocks", str(NUM_BLOCKS), "--block-size", str(BLOCK_SIZE))

# name -> (checkpoint, tp, pp)
PIPELINES = {
    "llama-tp2-pp2": ("llama", 2, 2),
    "llama-mqa-tp2": ("llama-mqa", 2, 1),
    "gpt2-odd-vocab-tp2-pp2": ("gpt2-odd-vocab", 2, 2),
    "opt-proj-sharded-pp2": ("opt-proj-sharded", 1, 2),
}


@pytest.fixture(scope="module")
def pipelines(checkpoint, tmp_path_factory):
    """name -> a running pipeline (started on first use, killed at the module's end)."""
    running: dict[str, Pipeline] = {}

    def get(name: str) -> Pipeline:
        if name not in running:
            model, tp, pp = PIPELINES[name]
            log_dir = tmp_path_factory.mktemp(name)
            running[name] = Pipeline(checkpoint(model), tp, pp, log_dir, *WORKER_FLAGS)
        return running[name]

    try:
        yield get
    finally:
        for pipeline in running.values():
            pipeline.stop()


def reference(path) -> ModelRunner:
    """The single-process runner the pipeline must reproduce."""
    return ModelRunner(RunnerConfig(str(path), num_kv_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE))


def check_results(pipeline: Pipeline, got: list[pb.StepResult], want: pb.StepResult) -> None:
    """Every worker answered `want`'s step without error; only the sampler has tokens, and
    they are the reference's (ids exactly, logprobs to LOGPROB_TOL)."""
    assert want.error == "", want.error
    for i, result in enumerate(got):
        assert (result.step_id, result.error) == (want.step_id, ""), pipeline.logs()
        if i != pipeline.sampler:
            assert not result.tokens, f"worker {i} returned tokens"
    tokens = got[pipeline.sampler].tokens
    assert [(t.seq_id, t.token_id) for t in tokens] == [(t.seq_id, t.token_id) for t in want.tokens]
    for mine, theirs in zip(tokens, want.tokens, strict=True):
        assert mine.logprob == pytest.approx(theirs.logprob, abs=LOGPROB_TOL)
        assert [t.token_id for t in mine.top_logprobs] == [t.token_id for t in theirs.top_logprobs]
        assert [t.logprob for t in mine.top_logprobs] == pytest.approx(
            [t.logprob for t in theirs.top_logprobs], abs=LOGPROB_TOL
        )


@pytest.mark.parametrize("name", list(PIPELINES))
def test_pipeline_matches_the_single_process_runner(name, pipelines, checkpoint):
    """Prefill chunks mixed with decodes, four sequences (one joins late), a release."""
    pipeline = pipelines(name)
    ref = reference(checkpoint(PIPELINES[name][0]))
    vocab = ref.model_config.vocab_size
    p0, p1, p2, p3 = random_prompts((5, 13, 9, 7), vocab, seed=5)
    driver = PlanDriver(ref)
    last: dict[str, int] = {}

    def decode(*seqs: str) -> list[tuple[str, list[int], bool]]:
        return [(s, [last[s]], True) for s in seqs]

    async def scenario() -> None:
        async with PipelineClient(pipeline.addresses) as client:
            infos = await client.infos()
            tp, pp = pipeline.tp, pipeline.pp
            assert [(i.stage, i.tp_rank) for i in infos] == [
                (s, r) for s in range(pp) for r in range(tp)
            ]
            assert {(i.pipeline, i.pp_size, i.tp_size) for i in infos} == {(0, pp, tp)}
            assert {i.num_kv_blocks for i in infos} == {NUM_BLOCKS}
            assert {i.vocab_size for i in infos} == {vocab}

            async def step(work, released=()) -> None:
                plan = driver.plan(work, released)
                want = ref.execute(plan)
                check_results(pipeline, await client.run(plan), want)
                last.update({t.seq_id: t.token_id for t in want.tokens})

            driver.add("s0", p0, logprobs=True, top_logprobs=3)
            driver.add("s1", p1, logprobs=True)
            await step([("s0", p0, True), ("s1", p1[:6], False)])
            driver.add("s2", p2, logprobs=True, top_logprobs=2)
            await step([*decode("s0"), ("s1", p1[6:], True), ("s2", p2, True)])
            await step(decode("s0", "s1", "s2"))
            driver.add("s3", p3, logprobs=True)
            await step([*decode("s0", "s1"), ("s3", p3, True)], released=("s2",))
            for _ in range(3):
                await step(decode("s0", "s1", "s3"))

    asyncio.run(scenario())


def test_two_plans_in_flight(pipelines, checkpoint):
    """Stage 0 takes plan k + 1 before stage 1 has even seen plan k (the paper's pipelining);
    results still come back in order and right. Two groups of sequences alternate, so that
    no sequence is in two plans at once, as the scheduler guarantees."""
    pipeline = pipelines("llama-tp2-pp2")
    ref = reference(checkpoint("llama"))
    prompts = random_prompts((6, 11, 8, 5), ref.model_config.vocab_size, seed=9)
    driver = PlanDriver(ref)
    groups = (("a0", "a1"), ("b0", "b1"))
    prompt_of = dict(zip([s for g in groups for s in g], prompts, strict=True))
    for seq_id, prompt in prompt_of.items():
        driver.add(seq_id, prompt, logprobs=True)
    stage0, stage1 = pipeline.stage_workers(0), pipeline.stage_workers(1)

    async def scenario() -> None:
        async with PipelineClient(pipeline.addresses) as client:
            # Plans 0 (group a) and 1 (group b) go to stage 0 only; plan 0 comes back from
            # stage 0 while stage 1 has neither plan.
            plans = [driver.plan([(s, prompt_of[s], True) for s in group]) for group in groups]
            wants = [ref.execute(plan) for plan in plans]
            for plan in plans:
                await client.write(stage0, plan)
            early = [await client.read(i) for i in stage0]
            assert [(r.step_id, r.error) for r in early] == [(0, "")] * len(stage0)
            for plan in plans:
                await client.write(stage1, plan)
            got = {0: early + [await client.read(i) for i in stage1]}
            got[1] = [await client.read(i) for i in stage0 + stage1]
            for k in (0, 1):
                check_results(pipeline, got[k], wants[k])

            # Then the steady state: two plans in flight, each built from the result of the
            # plan two steps back (same group).
            last = {t.seq_id: t.token_id for w in wants for t in w.tokens}
            in_flight = []
            for k in range(2, 8):
                group = groups[k % 2]
                if len(in_flight) == 2:
                    plan, want = in_flight.pop(0)
                    check_results(pipeline, [await client.read(i) for i in stage0 + stage1], want)
                plan = driver.plan([(s, [last[s]], True) for s in group])
                want = ref.execute(plan)
                last.update({t.seq_id: t.token_id for t in want.tokens})
                await client.write(stage0 + stage1, plan)
                in_flight.append((plan, want))
            for _plan, want in in_flight:
                check_results(pipeline, [await client.read(i) for i in stage0 + stage1], want)

    asyncio.run(scenario())


def test_a_failed_step_fails_everywhere_and_the_pipeline_goes_on(pipelines, checkpoint):
    """A plan every worker rejects, then a plan only one stage-0 worker refuses (it drains):
    every worker answers with an error and no worker waits for a peer; the next plan runs.
    (Runs last on this pipeline: the drained worker stays drained.)"""
    pipeline = pipelines("llama-tp2-pp2")
    ref = reference(checkpoint("llama"))
    prompt, other = random_prompts((7, 4), ref.model_config.vocab_size, seed=11)
    driver = PlanDriver(ref)

    async def scenario() -> None:
        async with PipelineClient(pipeline.addresses) as client:
            driver.add("a", prompt)
            plan = driver.plan([("a", prompt, True)])
            want = ref.execute(plan)
            check_results(pipeline, await client.run(plan), want)
            token = want.tokens[0].token_id

            ghost = pb.StepPlan(
                step_id=99, steps=[pb.SequenceStep(seq_id="ghost", token_ids=[5], sample=True)]
            )
            for result in await client.run(ghost):
                assert result.step_id == 99 and "unknown sequence" in result.error

            drained = pipeline.stage_workers(0)[1]
            await client.stubs[drained].Drain(pb.DrainRequest())
            driver.add("b", other)
            refused = driver.plan([("a", [token], True), ("b", other, True)])
            results = await client.run(refused)
            errors = [r.error for r in results]
            assert errors[drained].startswith("draining"), errors
            assert errors[pipeline.stage_workers(0)[0]] == PEER_FAILED
            assert {errors[i] for i in pipeline.stage_workers(1)} == {UPSTREAM_FAILED}

            # No worker kept anything of the refused plan: "a" retries the same step alone.
            retry = pb.StepPlan(step_id=refused.step_id + 1, steps=[refused.steps[0]])
            check_results(pipeline, await client.run(retry), ref.execute(retry))

    asyncio.run(scenario())


def test_a_dead_worker_breaks_its_pipeline_and_the_others_exit(pipelines, checkpoint):
    """Kill stage 1: stage 0 answers a plan with a "pipeline broken" error (no hang), then
    exits 1 so that the orchestrator restarts the pipeline. (Runs last on this pipeline.)"""
    pipeline = pipelines("opt-proj-sharded-pp2")
    ref = reference(checkpoint("opt-proj-sharded"))
    prompt = random_prompts((6,), ref.model_config.vocab_size, seed=13)[0]
    driver = PlanDriver(ref)
    pipeline.workers[1].stop()

    async def scenario() -> list[str]:
        errors = []
        async with PipelineClient(pipeline.addresses[:1]) as client:
            driver.add("a", prompt)
            for work in ([("a", prompt[:3], False)], [("a", prompt[3:], True)]):
                result = await client.run(driver.plan(work))
                errors.append(result[0].error)
                if result[0].error:
                    break
        return errors

    errors = asyncio.run(scenario())
    assert errors[-1].startswith("pipeline broken"), errors
    assert pipeline.workers[0].process.wait(timeout=30) == 1
