"""The pure topology: ordinals, ranks, pipeline members and layer splits."""

from __future__ import annotations

import pytest

from orca_worker.parallel.topology import (
    TopologyError,
    WorkerPlace,
    parse_layer_counts,
    pipeline_ordinals,
    place_of,
    split_layers,
)


def test_ordinals_map_to_pipeline_stage_rank_and_back():
    pp, tp = 3, 2
    places = [place_of(i, pp, tp) for i in range(2 * pp * tp)]
    assert [(p.pipeline, p.stage, p.tp_rank) for p in places[:6]] == [
        (0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (0, 2, 0), (0, 2, 1),
    ]  # fmt: skip
    assert (places[7].pipeline, places[7].stage, places[7].tp_rank) == (1, 0, 1)
    assert [p.ordinal for p in places] == list(range(12))
    assert [p.rank for p in places[6:]] == list(range(6))
    assert {p.first_ordinal for p in places[6:]} == {6}


def test_roles_of_the_stages():
    first, middle, last0, last1 = (place_of(i, 3, 2) for i in (1, 2, 4, 5))
    assert first.is_first_stage and not first.is_last_stage and not first.samples
    assert not middle.is_first_stage and not middle.is_last_stage
    assert last0.is_last_stage and last0.samples
    assert last1.is_last_stage and not last1.samples  # TP rank 1 returns no tokens
    assert WorkerPlace().samples and WorkerPlace().world_size == 1


def test_pipeline_members_and_stage_ranks():
    assert list(pipeline_ordinals(1, 2, 2)) == [4, 5, 6, 7]
    place = place_of(5, 2, 2)
    assert place.stage_ranks(1) == [2, 3]
    assert place.rank_of(1, place.tp_rank) == 3


@pytest.mark.parametrize(
    ("ordinal", "pp", "tp"), [(-1, 1, 1), (0, 0, 1), (0, 1, 0)]
)  # fmt: skip
def test_bad_topologies(ordinal, pp, tp):
    with pytest.raises(TopologyError):
        place_of(ordinal, pp, tp)


def test_explicit_places_are_checked():
    with pytest.raises(TopologyError, match="stage 2"):
        WorkerPlace(stage=2, pp_size=2)
    with pytest.raises(TopologyError, match="tp rank"):
        WorkerPlace(tp_rank=1, tp_size=1)


def test_even_layer_split_gives_the_remainder_to_the_first_stages():
    assert split_layers(32, 4) == [range(0, 8), range(8, 16), range(16, 24), range(24, 32)]
    assert split_layers(10, 4) == [range(0, 3), range(3, 6), range(6, 8), range(8, 10)]
    assert split_layers(2, 1) == [range(0, 2)]


def test_explicit_layer_split():
    counts = parse_layer_counts("12,12,8")
    assert counts == (12, 12, 8)
    assert split_layers(32, 3, counts) == [range(0, 12), range(12, 24), range(24, 32)]


@pytest.mark.parametrize(
    ("num_layers", "pp", "counts", "match"),
    [
        (32, 3, (12, 12), "3 stages"),
        (32, 3, (12, 12, 9), "sum to 33"),
        (3, 4, None, "at least one layer"),
        (2, 2, (2, 0), "at least one layer"),
    ],
)
def test_bad_layer_splits(num_layers, pp, counts, match):
    with pytest.raises(TopologyError, match=match):
        split_layers(num_layers, pp, counts)
    with pytest.raises(TopologyError, match="integers"):
        parse_layer_counts("12,x")
