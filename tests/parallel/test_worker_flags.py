"""`orca-worker`'s topology flags: an ordinal, explicit overrides, ORCA_* defaults."""

from __future__ import annotations

import pytest

from orca_worker.parallel.distributed import parse_init_addr
from orca_worker.parallel.topology import TopologyError, WorkerPlace, place_of
from orca_worker.service_config import parse_config

ADDR = ("--dist-init-addr", "worker-0:29500")


def test_a_lone_worker_needs_no_topology():
    config = parse_config(["--model", "m"], {})
    assert config.runner.place == WorkerPlace()
    assert config.dist_init_addr is None and config.runner.pp_layers is None


def test_the_ordinal_gives_the_place():
    config = parse_config(["--model", "m", "--ordinal", "5", "--tp", "2", "--pp", "2", *ADDR], {})
    assert config.runner.place == WorkerPlace(pipeline=1, stage=0, tp_rank=1, pp_size=2, tp_size=2)
    assert config.dist_init_addr == "worker-0:29500"
    assert (config.dist_timeout_s, config.dist_connect_timeout_s) == (120.0, 600.0)


def test_environment_defaults_and_explicit_overrides():
    env = {
        "ORCA_MODEL": "m",
        "ORCA_TP": "2",
        "ORCA_PP": "3",
        "ORCA_WORKER_ORDINAL": "3",
        "ORCA_DIST_INIT_ADDR": "w:1",
        "ORCA_PP_LAYERS": "4,4,2",
    }
    config = parse_config([], env)
    assert config.runner.place == place_of(3, 3, 2)
    assert config.runner.pp_layers == (4, 4, 2)
    overridden = parse_config(["--stage", "2", "--tp-rank", "0"], env).runner.place
    assert (overridden.pipeline, overridden.stage, overridden.tp_rank) == (0, 2, 0)


@pytest.mark.parametrize(
    "argv",
    [
        ["--tp", "2"],  # no rendezvous address
        ["--tp", "2", "--tp-rank", "2", *ADDR],
        ["--pp", "2", "--pp-layers", "1,1,1", *ADDR],
        ["--pp", "2", "--pp-layers", "a,b", *ADDR],
    ],
)
def test_bad_topology_flags(argv):
    with pytest.raises(SystemExit):
        parse_config(["--model", "m", *argv], {})


def test_rendezvous_address_template():
    place = place_of(13, 2, 2)  # pipeline 3, whose first worker is ordinal 12
    assert parse_init_addr("orca-worker-{first}.orca-worker:29500", place) == (
        "orca-worker-12.orca-worker",
        29500,
    )
    assert parse_init_addr("[::1]:7000", place) == ("::1", 7000)
    with pytest.raises(TopologyError):
        parse_init_addr("no-port", place)


def test_help_lists_the_topology_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--help"], {})
    assert exit_info.value.code == 0
    assert "--dist-init-addr" in capsys.readouterr().out
