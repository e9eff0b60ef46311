"""The demo checkpoint loads in transformers, its tokenizer round-trips, and it is reproducible."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from orca.demo_model import VOCAB_SIZE, run_demo_model_command, write_demo_model


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    return write_demo_model(tmp_path_factory.mktemp("demo") / "model", seed=0)


@pytest.fixture(scope="module")
def tokenizer(demo_dir):
    return AutoTokenizer.from_pretrained(demo_dir)


def test_vocab_sizes_agree(demo_dir, tokenizer):
    config = json.loads((demo_dir / "config.json").read_text())
    weights = load_file(demo_dir / "model.safetensors")
    assert config["vocab_size"] == VOCAB_SIZE == len(tokenizer)
    assert weights["model.embed_tokens.weight"].shape == (VOCAB_SIZE, config["hidden_size"])
    assert weights["lm_head.weight"].shape == (VOCAB_SIZE, config["hidden_size"])
    assert config["num_key_value_heads"] < config["num_attention_heads"]  # GQA
    assert not config["tie_word_embeddings"]


def test_checkpoint_loads_in_transformers_and_generates_varied_text(demo_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(demo_dir)
    weights = load_file(demo_dir / "model.safetensors")
    assert set(weights) == set(model.state_dict())
    ids = tokenizer("The scheduler batches requests", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
        out = model.generate(ids, max_new_tokens=16, do_sample=False)
    assert logits.shape == (1, ids.shape[1], VOCAB_SIZE)
    top2 = logits[0].topk(2).values
    assert (top2[:, 0] - top2[:, 1]).min() > 5e-3  # greedy choices are not float noise
    assert len(set(out[0, ids.shape[1] :].tolist())) > 4  # not one token repeated
    generation = json.loads((demo_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [
        tokenizer.convert_tokens_to_ids("<|end_of_text|>"),
        tokenizer.convert_tokens_to_ids("<|eot_id|>"),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "The KV cache holds keys and values.\n\nTwo  spaces, tabs\tand 123 numbers!",
        "  leading spaces and trailing ones  ",
        "café naïve résumé – €5, 21 °C, 東京, emoji 🙂",
    ],
)
def test_tokenizer_round_trips_text(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    with_bos = tokenizer.encode(text)
    assert with_bos[0] == tokenizer.bos_token_id and with_bos[1:] == ids
    assert tokenizer.decode(with_bos, skip_special_tokens=True) == text


def test_chat_template_renders_llama3_turns(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi there"}]},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ids.count(tokenizer.bos_token_id) == 1
    assert ids.count(tokenizer.eos_token_id) == 2  # eos is <|eot_id|>
    assert tokenizer.convert_ids_to_tokens(ids[1]) == "<|start_header_id|>"


def test_same_seed_gives_identical_files(demo_dir, tmp_path):
    again = write_demo_model(tmp_path / "again", seed=0)
    other = write_demo_model(tmp_path / "other", seed=1)
    names = sorted(p.name for p in demo_dir.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (demo_dir / name).read_bytes() == (again / name).read_bytes(), name
    assert (other / "model.safetensors").read_bytes() != (again / "model.safetensors").read_bytes()
    assert (other / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()


def test_cli_command_writes_and_reports(tmp_path, capsys):
    code = run_demo_model_command(argparse.Namespace(dir=str(tmp_path / "cli"), seed=3))
    assert code == 0
    assert (tmp_path / "cli" / "model.safetensors").exists()
    assert str((tmp_path / "cli").resolve()) in capsys.readouterr().out
