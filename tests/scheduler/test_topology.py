"""Worker ordinals as (pipeline, stage, rank), complete pipelines, and placing requests on
the least loaded pipeline: plain functions, plain tests."""

from __future__ import annotations

import pytest

from orca_proto.topology import Topology, WorkerPosition
from orca_scheduler.placement import PipelineLoad, Placement


def test_ordinals_map_to_pipeline_stage_rank_and_back():
    t = Topology(pp=2, tp=3)
    assert t.pipeline_size == 6
    # Pipeline 1 is ordinals 6..11: stage 0 ranks 0..2, then stage 1 ranks 0..2.
    assert [t.position(o) for o in (6, 8, 9, 11)] == [
        WorkerPosition(1, 0, 0),
        WorkerPosition(1, 0, 2),
        WorkerPosition(1, 1, 0),
        WorkerPosition(1, 1, 2),
    ]
    for ordinal in range(30):
        p = t.position(ordinal)
        assert t.ordinal(p.pipeline, p.stage, p.tp_rank) == ordinal
        assert ordinal in t.members(p.pipeline)
    assert list(t.members(2)) == list(range(12, 18))
    assert t.last_stage_rank0_index == 3  # members(p)[3] is stage 1 rank 0
    assert t.position(t.members(4)[t.last_stage_rank0_index]) == WorkerPosition(4, 1, 0)


def test_one_worker_pipelines():
    t = Topology()
    assert [t.position(o) for o in range(3)] == [WorkerPosition(p, 0, 0) for p in range(3)]
    assert (t.last_stage_rank0_index, list(t.members(5))) == (0, [5])


def test_complete_pipelines_need_every_member():
    t = Topology(pp=2, tp=2)
    assert t.complete_pipelines([]) == []
    assert t.complete_pipelines([0, 1, 2]) == []
    assert t.complete_pipelines([3, 2, 1, 0, 4, 5, 6]) == [0]
    assert t.complete_pipelines(range(12)) == [0, 1, 2]
    assert t.complete_pipelines([8, 9, 10, 11, 0, 1, 2]) == [2]  # a gap is fine


def test_whole_pipelines_and_bad_arguments():
    t = Topology(pp=2, tp=2)
    assert t.num_pipelines(8) == 2
    with pytest.raises(ValueError, match="whole pipelines"):
        t.num_pipelines(6)
    with pytest.raises(ValueError):
        Topology(pp=0)
    with pytest.raises(ValueError):
        t.position(-1)
    with pytest.raises(ValueError):
        t.ordinal(0, 2, 0)  # no stage 2


def test_placement_balances_tokens_then_free_blocks_then_id():
    placement = Placement(
        [PipelineLoad(0, 100, 10), PipelineLoad(1, 40, 10), PipelineLoad(2, 40, 30)]
    )
    # Fewest tokens first (1 and 2 tie at 40): the most free blocks wins.
    assert placement.choose(50) == 2
    assert placement.choose(10) == 1  # 2 now holds 90 tokens
    assert placement.choose(60) == 1  # 50 < 90
    assert placement.choose(1) == 2  # 90 < 100 < 110
    assert Placement([PipelineLoad(3, 0, 8), PipelineLoad(1, 0, 8)]).choose(5) == 1
    assert Placement([]).choose(5) is None


def test_placement_of_equal_requests_alternates():
    placement = Placement([PipelineLoad(p, 0, 64) for p in range(2)])
    assert [placement.choose(20) for _ in range(6)] == [0, 1, 0, 1, 0, 1]
