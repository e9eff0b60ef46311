"""Builds a model on its device and fills its weights from safetensors (or at random).

Each parameter is allocated once, in the target dtype, directly on the target device;
checkpoint tensors are then copied into it (into row slices for fused projections).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from orca_worker.config import ModelConfig
from orca_worker.errors import MissingWeightsError, ModelLoadError
from orca_worker.models.base import CausalLM
from orca_worker.models.registry import get_model_class

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
LOAD_FORMATS = ("safetensors", "random")
RANDOM_INIT_STD = 0.02


@dataclass(frozen=True)
class WeightSpec:
    """One checkpoint tensor and the parameter rows it fills."""

    checkpoint_name: str
    param_name: str
    row_offset: int
    num_rows: int
    transpose: bool = False


def load_model(
    config: ModelConfig,
    model_dir: str | Path,
    dtype: torch.dtype,
    device: torch.device,
    load_format: str = "safetensors",
    seed: int = 0,
) -> CausalLM:
    """Build the model for `config` on `device` in `dtype` and load (or randomize) its weights."""
    if load_format not in LOAD_FORMATS:
        raise ModelLoadError(f"unknown load_format {load_format!r}; expected one of {LOAD_FORMATS}")
    model_cls = get_model_class(config.architecture)
    with torch.no_grad(), torch.device(device), _default_dtype(dtype):
        model = model_cls(config)
        if load_format == "random":
            init_random(model, seed)
        else:
            load_safetensors(model, Path(model_dir))
    return model.eval()


def checkpoint_specs(model: CausalLM) -> list[WeightSpec]:
    """Where every checkpoint tensor the model needs goes, derived from its parameter names."""
    modules = dict(model.named_modules())
    specs = []
    for param_name, param in model.named_parameters():
        module_name, _, leaf = param_name.rpartition(".")
        parent, _, attr = module_name.rpartition(".")
        parts = model.packed_modules.get(attr)
        if parts is None:
            pieces = [(module_name, param.shape[0])]
        else:  # a fused projection: one checkpoint tensor per stacked part
            sizes = modules[module_name].output_sizes
            pieces = [
                (f"{parent}.{part}" if parent else part, n)
                for part, n in zip(parts, sizes, strict=True)
            ]
        offset = 0
        for ckpt_module, rows in pieces:
            name = f"{ckpt_module}.{leaf}"
            for ours, theirs in model.checkpoint_renames:
                name = name.replace(ours, theirs)
            transpose = name.endswith(model.transposed_weights)
            specs.append(WeightSpec(name, param_name, offset, rows, transpose))
            offset += rows
    return specs


def load_safetensors(model: CausalLM, model_dir: Path) -> None:
    """Copy every tensor the model needs from `model.safetensors` or a sharded index."""
    tensor_files = _tensor_files(model_dir)
    specs = checkpoint_specs(model)
    names = {
        s.checkpoint_name: _resolve_name(s.checkpoint_name, model, tensor_files) for s in specs
    }
    missing = [n for n, found in names.items() if found is None]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise MissingWeightsError(
            f"checkpoint in {str(model_dir)!r} has no tensor {missing[0]!r}{more}"
        )
    by_file: dict[str, list[WeightSpec]] = defaultdict(list)
    for spec in specs:
        by_file[tensor_files[names[spec.checkpoint_name]]].append(spec)
    params = dict(model.named_parameters())
    device = next(iter(params.values())).device
    for file_name, file_specs in by_file.items():
        path = model_dir / file_name
        if not path.is_file():
            raise MissingWeightsError(
                f"weight file {file_name!r} listed in {INDEX_FILE} is missing"
            )
        # Read straight onto the target device: a GPU load skips a host copy.
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            for spec in file_specs:
                tensor = f.get_tensor(names[spec.checkpoint_name])
                if spec.transpose:
                    tensor = tensor.t()
                target = params[spec.param_name].data.narrow(0, spec.row_offset, spec.num_rows)
                if tensor.shape != target.shape:
                    raise ModelLoadError(
                        f"tensor {spec.checkpoint_name!r} in {file_name} has shape "
                        f"{tuple(tensor.shape)}, the model expects {tuple(target.shape)}"
                    )
                target.copy_(tensor)


def init_random(model: CausalLM, seed: int) -> None:
    """Seeded random weights (for benchmarks without a checkpoint): norms 1, biases 0,
    matrices N(0, 0.02), generated on the parameters' own device."""
    params = list(model.named_parameters())
    generator = torch.Generator(device=params[0][1].device).manual_seed(seed)
    for name, param in params:
        if param.dim() > 1:
            param.data.normal_(0.0, RANDOM_INIT_STD, generator=generator)
        elif name.endswith("bias"):
            param.data.zero_()
        else:  # 1-D weights are norm scales
            param.data.fill_(1.0)


def _tensor_files(model_dir: Path) -> dict[str, str]:
    """Checkpoint tensor name -> file name (relative to model_dir)."""
    index_path = model_dir / INDEX_FILE
    if index_path.is_file():
        try:
            return dict(json.loads(index_path.read_text())["weight_map"])
        except (json.JSONDecodeError, KeyError) as exc:
            raise ModelLoadError(f"{index_path} is not a safetensors index: {exc}") from exc
    single = model_dir / SINGLE_FILE
    if single.is_file():
        with safe_open(str(single), framework="pt") as f:
            return dict.fromkeys(f.keys(), SINGLE_FILE)
    raise MissingWeightsError(
        f"no {SINGLE_FILE} or {INDEX_FILE} in {str(model_dir)!r} "
        "(only safetensors checkpoints are supported; load_format='random' needs none)"
    )


def _resolve_name(name: str, model: CausalLM, tensor_files: dict[str, str]) -> str | None:
    """The name `name` has in this checkpoint: as is, or without the base-model prefix
    (the Hub's GPT-2 and OPT files were saved from the base model)."""
    if name in tensor_files:
        return name
    prefix = model.checkpoint_prefix
    if prefix and name.startswith(prefix) and name[len(prefix) :] in tensor_files:
        return name[len(prefix) :]
    return None


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Create parameters in `dtype` without threading it through every layer."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
