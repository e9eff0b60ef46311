"""A small random-weight Llama checkpoint, written offline, that the whole stack can serve.

`write_demo_model(dir)` writes an ordinary Hugging Face model folder: `config.json`
(LlamaForCausalLM with grouped-query attention), `model.safetensors` (HF tensor names,
float32), `generation_config.json` and a byte-level BPE tokenizer trained on the prose in
`orca/data/corpus.txt`, with Llama-3 special tokens and chat template. The same seed
always gives the same bytes. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

HIDDEN_SIZE = 256
INTERMEDIATE_SIZE = 704
NUM_LAYERS = 4
NUM_HEADS = 8
NUM_KV_HEADS = 4
HEAD_DIM = HIDDEN_SIZE // NUM_HEADS
VOCAB_SIZE = 2048
MAX_POSITIONS = 2048
RMS_NORM_EPS = 1e-5
ROPE_THETA = 500000.0

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
SPECIAL_TOKENS = [BOS, EOS, START_HEADER, END_HEADER, EOT]  # ids 0..4, in this order

# Llama-3 layout: every turn is a header with the role, a blank line, the text, <|eot_id|>.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set text = message['content'] %}"
    "{%- else %}{%- set text = message['content'] | map(attribute='text') | join('') %}"
    "{%- endif %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + text | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

# Random weights this wide give near-uniform, repetitive greedy text at the usual 0.02 std;
# these gains keep the output varied and the top-2 logit margins far from float noise.
EMBED_STD = 1.0
PROJ_GAIN = 1.5
LM_HEAD_GAIN = 4.0


def corpus_text() -> str:
    """The English prose the demo tokenizer is trained on (shipped as package data)."""
    # Next to this file rather than importlib.resources: editable installs may make `orca`
    # a namespace package, which resources.files() cannot read from.
    return (Path(__file__).parent / "data" / "corpus.txt").read_text(encoding="utf-8")


def train_tokenizer():
    """A byte-level BPE `tokenizers.Tokenizer` of exactly VOCAB_SIZE tokens (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_text().splitlines(keepends=True), trainer)
    if tokenizer.get_vocab_size() != VOCAB_SIZE:
        raise RuntimeError(f"demo tokenizer has {tokenizer.get_vocab_size()} tokens")
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A",
                pair=f"{BOS} $A {BOS}:1 $B:1",
                special_tokens=[(BOS, bos_id)],
            ),
        ]
    )
    return tokenizer


def model_config(bos_token_id: int, eos_token_ids: list[int]) -> dict:
    """The config.json of the demo checkpoint."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": HIDDEN_SIZE,
        "intermediate_size": INTERMEDIATE_SIZE,
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": NUM_HEADS,
        "num_key_value_heads": NUM_KV_HEADS,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": RMS_NORM_EPS,
        # Both spellings: transformers 5 reads rope_parameters, older readers rope_theta.
        "rope_theta": ROPE_THETA,
        "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "use_cache": True,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_ids,
        "dtype": "float32",
    }


def random_weights(seed: int) -> dict[str, torch.Tensor]:
    """The checkpoint's float32 tensors under their HF names, drawn from one seeded stream."""
    gen = torch.Generator().manual_seed(seed)

    def normal(rows: int, cols: int, std: float) -> torch.Tensor:
        return torch.randn((rows, cols), generator=gen) * std

    def linear(out_features: int, in_features: int, gain: float = PROJ_GAIN) -> torch.Tensor:
        return normal(out_features, in_features, gain / in_features**0.5)

    kv_width = NUM_KV_HEADS * HEAD_DIM
    weights = {"model.embed_tokens.weight": normal(VOCAB_SIZE, HIDDEN_SIZE, EMBED_STD)}
    for i in range(NUM_LAYERS):
        p = f"model.layers.{i}."
        weights[p + "input_layernorm.weight"] = torch.ones(HIDDEN_SIZE)
        weights[p + "self_attn.q_proj.weight"] = linear(NUM_HEADS * HEAD_DIM, HIDDEN_SIZE)
        weights[p + "self_attn.k_proj.weight"] = linear(kv_width, HIDDEN_SIZE)
        weights[p + "self_attn.v_proj.weight"] = linear(kv_width, HIDDEN_SIZE)
        weights[p + "self_attn.o_proj.weight"] = linear(HIDDEN_SIZE, NUM_HEADS * HEAD_DIM)
        weights[p + "post_attention_layernorm.weight"] = torch.ones(HIDDEN_SIZE)
        weights[p + "mlp.gate_proj.weight"] = linear(INTERMEDIATE_SIZE, HIDDEN_SIZE)
        weights[p + "mlp.up_proj.weight"] = linear(INTERMEDIATE_SIZE, HIDDEN_SIZE)
        weights[p + "mlp.down_proj.weight"] = linear(HIDDEN_SIZE, INTERMEDIATE_SIZE)
    weights["model.norm.weight"] = torch.ones(HIDDEN_SIZE)
    weights["lm_head.weight"] = linear(VOCAB_SIZE, HIDDEN_SIZE, LM_HEAD_GAIN)
    return {name: t.contiguous() for name, t in weights.items()}


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def tokenizer_config() -> dict:
    """tokenizer_config.json: special tokens, the chat template, no transformers version."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOT,  # the end of an assistant turn, as in Llama-3 instruct models
        "additional_special_tokens": [EOS, START_HEADER, END_HEADER],
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_POSITIONS,
    }


def write_demo_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the demo checkpoint and tokenizer into `out_dir` (created); return its path.

    The tokenizer files are written directly (not by transformers' save_pretrained) so the
    folder is byte-identical whatever transformers version runs this.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer()
    bos_id = tokenizer.token_to_id(BOS)
    eos_ids = [tokenizer.token_to_id(EOS), tokenizer.token_to_id(EOT)]

    _write_json(out / "config.json", model_config(bos_id, eos_ids))
    _write_json(out / "generation_config.json", {"bos_token_id": bos_id, "eos_token_id": eos_ids})
    weights_path = out / "model.safetensors"
    save_file(random_weights(seed), str(weights_path), metadata={"format": "pt"})
    weights_path.chmod(0o644)  # safetensors creates it owner-only
    tokenizer.save(str(out / "tokenizer.json"))
    _write_json(out / "tokenizer_config.json", tokenizer_config())
    _write_json(out / "special_tokens_map.json", {"bos_token": BOS, "eos_token": EOT})
    return out


def run_demo_model_command(args: argparse.Namespace) -> int:
    """`orca demo-model DIR [--seed N]`: write the checkpoint and say where."""
    out = write_demo_model(args.dir, seed=args.seed)
    print(f"wrote demo model to {out.resolve()} (seed={args.seed}, vocab={VOCAB_SIZE})")
    return 0
