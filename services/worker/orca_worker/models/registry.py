"""Maps config.json's `architectures[0]` to the model class that implements it."""

from __future__ import annotations

from orca_worker.errors import UnsupportedArchitectureError
from orca_worker.models.base import CausalLM
from orca_worker.models.gpt2 import GPT2LMHeadModel
from orca_worker.models.llama import LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM
from orca_worker.models.opt import OPTForCausalLM
from orca_worker.models.qwen3 import Qwen3ForCausalLM

MODEL_CLASSES: dict[str, type[CausalLM]] = {
    cls.__name__: cls
    for cls in (
        LlamaForCausalLM,
        MistralForCausalLM,
        Qwen2ForCausalLM,
        Qwen3ForCausalLM,
        GPT2LMHeadModel,
        OPTForCausalLM,
    )
}


def get_model_class(architecture: str) -> type[CausalLM]:
    """The class for `architecture`; UnsupportedArchitectureError names the ones we have."""
    try:
        return MODEL_CLASSES[architecture]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"unsupported architecture {architecture!r}; supported: {', '.join(MODEL_CLASSES)}"
        ) from None
