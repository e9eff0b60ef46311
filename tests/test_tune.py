"""`orca tune`: candidate settings, picking the best, the config file, and one real run of
the command on a tiny checkpoint (CPU)."""

from __future__ import annotations

import json

import pytest
from tiny_models import make_tiny_checkpoint

from orca import LLM, SamplingParams
from orca.cli import main
from orca.tune import (
    SettingResult,
    candidate_settings,
    pick_best,
    read_scheduler_config,
    write_scheduler_config,
)


def test_candidates_are_every_combination():
    assert candidate_settings([8, 16], [512]) == [
        {"max_num_seqs": 8, "max_num_batched_tokens": 512},
        {"max_num_seqs": 16, "max_num_batched_tokens": 512},
    ]


def test_best_is_the_highest_rate_within_budget_then_the_higher_achieved_rate():
    def result(seqs, best, achieved):
        rows = [{"rate": best or 1.0, "achieved_req_s": achieved}]
        return SettingResult({"max_num_seqs": seqs, "max_num_batched_tokens": 64}, rows, best)

    none_met = result(4, None, 9.0)
    slow = result(8, 4.0, 3.9)
    fast = result(16, 8.0, 7.0)
    tie_worse = result(32, 8.0, 6.5)
    assert pick_best([none_met, slow, fast, tie_worse]) is fast
    assert pick_best([none_met]) is None


def test_config_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "sched.json"
    write_scheduler_config(path, {"max_num_seqs": 32, "max_num_batched_tokens": 2048, "x": 1})
    assert read_scheduler_config(path) == {"max_num_seqs": 32, "max_num_batched_tokens": 2048}
    for bad in ('{"max_num_seqs": 0}', '{"kv_policy": "paged"}', "[1]", "not json"):
        path.write_text(bad)
        with pytest.raises(ValueError, match="scheduler config"):
            read_scheduler_config(path)


def test_reconfigure_needs_an_idle_engine(tmp_path):
    llm = LLM(model=str(make_tiny_checkpoint("llama", tmp_path)), dtype="float32")
    llm.add_request([5, 6, 7], SamplingParams(max_tokens=3))
    with pytest.raises(ValueError, match="idle"):
        llm.reconfigure(max_num_seqs=2)
    while llm.has_unfinished():
        llm.step()
    llm.reconfigure(max_num_seqs=2)
    assert llm.scheduler.config.max_num_seqs == 2
    out = llm.generate(prompt_token_ids=[[3, 4]], sampling_params=SamplingParams(max_tokens=2))
    assert len(out[0].token_ids) == 2


def test_orca_tune_command_writes_the_chosen_setting(tmp_path, capsys):
    model = make_tiny_checkpoint("llama", tmp_path / "model")
    out = tmp_path / "chosen.json"
    code = main([
        "tune", "--model", str(model), "--latency-budget-ms-per-token", "10000",
        "--rates", "100,400", "--max-num-seqs", "1,4", "--max-num-batched-tokens", "64",
        "--n-per-rate", "6", "--write", str(out),
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "| max_num_seqs | max_num_batched_tokens | 100 req/s | 400 req/s |" in printed
    chosen = json.loads(out.read_text())
    assert chosen["max_num_batched_tokens"] == 64 and chosen["max_num_seqs"] in (1, 4)
    assert "chosen: {" in printed


def test_orca_tune_rejects_bad_lists(tmp_path, capsys):
    model = make_tiny_checkpoint("llama", tmp_path)
    assert main(["tune", "--model", str(model), "--latency-budget-ms-per-token", "5",
                 "--rates", "0"]) == 2  # fmt: skip
    with pytest.raises(SystemExit, match="max-num-seqs"):
        main(["tune", "--model", str(model), "--latency-budget-ms-per-token", "5",
              "--max-num-seqs", "a"])  # fmt: skip


def test_serve_rejects_a_bad_scheduler_config(tmp_path, capsys):
    bad = tmp_path / "sched.json"
    bad.write_text('{"max_num_seqs": -1}')
    assert main(["serve", "--model", str(tmp_path), "--scheduler-config", str(bad)]) == 2
    assert "max_num_seqs must be a positive int" in capsys.readouterr().err
