"""The services' flags: `ORCA_*` defaults read from the mapping main() passes, flags win;
and the recovery's reading of a half-published output stream."""

from __future__ import annotations

import pytest

from orca_proto.v1 import stream_pb2
from orca_scheduler.config import parse_config as parse_scheduler_config
from orca_scheduler.recovery import merge_chunks
from orca_worker.service_config import parse_config as parse_worker_config


def test_scheduler_flags_default_from_the_environment_and_flags_win():
    env = {
        "ORCA_REDIS_URL": "redis://cache:6379/2",
        "ORCA_WORKERS": "worker-0:50051",
        "ORCA_MAX_NUM_SEQS": "32",
        "ORCA_ENABLE_PREFIX_CACHING": "false",
        "ORCA_SCHEDULER_METRICS_PORT": "9100",
    }
    config = parse_scheduler_config(["--max-num-seqs", "8"], env)
    assert config.redis_url == "redis://cache:6379/2"
    assert config.workers == ("worker-0:50051",)
    assert config.max_num_seqs == 8
    assert config.enable_prefix_caching is False
    assert config.metrics_port == 9100
    assert config.consumer_name  # hostname-pid by default
    assert parse_scheduler_config(["--enable-prefix-caching"], env).enable_prefix_caching
    defaults = parse_scheduler_config([], {})
    assert (defaults.kv_policy, defaults.metrics_port, defaults.claim_idle_s) == ("paged", 0, 30)


def test_overlap_is_on_by_default_for_single_worker_pipelines_only():
    assert parse_scheduler_config([], {}).overlap is True
    assert parse_scheduler_config(["--no-overlap"], {}).overlap is False
    assert parse_scheduler_config([], {"ORCA_OVERLAP": "0"}).overlap is False
    two_stages = ["--workers", "a:1,b:2", "--pp", "2"]
    assert parse_scheduler_config(two_stages, {}).overlap is False
    with pytest.raises(SystemExit):
        parse_scheduler_config([*two_stages, "--overlap"], {})


@pytest.mark.parametrize(
    "argv",
    [
        ["--workers", "a:1,b:2,c:3", "--tp", "2"],  # not whole pipelines
        ["--workers", "a:1,b:2", "--pipelines", "1"],  # two pipelines of one worker
        ["--workers", "no-port"],
        ["--kv-policy", "lru"],
        ["--pp", "0"],
        ["--discovery", "consul"],
    ],
)
def test_scheduler_rejects_bad_flags(argv):
    with pytest.raises(SystemExit):
        parse_scheduler_config(argv, {})


def test_worker_flags_default_from_the_environment():
    env = {"ORCA_MODEL": "/models/x", "ORCA_WORKER_PORT": "6000", "ORCA_NUM_KV_BLOCKS": "128"}
    config = parse_worker_config(["--dtype", "bfloat16"], env)
    assert (config.port, config.host) == (6000, "127.0.0.1")
    assert config.runner.model_dir == "/models/x"
    assert (config.runner.num_kv_blocks, config.runner.dtype) == (128, "bfloat16")
    assert parse_worker_config(["--model", "m"], {}).runner.num_kv_blocks is None
    with pytest.raises(SystemExit):
        parse_worker_config([], {})  # no model


def test_merge_chunks_keeps_the_contiguous_tokens_once():
    def chunk(first, tokens, finished=False):
        return stream_pb2.TokenChunk(first_token_index=first, token_ids=tokens, finished=finished)

    merged = merge_chunks([chunk(0, [5, 6]), chunk(1, [6, 7]), chunk(3, [8])])
    assert (merged.token_ids, merged.finished) == ([5, 6, 7, 8], False)
    assert merge_chunks([chunk(0, [5]), chunk(2, [9])]).token_ids == [5]  # a gap: stop there
    assert merge_chunks([chunk(0, [5]), chunk(1, [], finished=True)]).finished
