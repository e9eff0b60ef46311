"""Builds a model on its device and fills its weights from safetensors (or at random).

The model is built on the meta device first (no memory), then `prepare` may cut it down
(pipeline stage pruning, tensor-parallel sharding); only what remains is allocated, in the
target dtype, directly on the target device. Each parameter then reads just its own slice
of each checkpoint tensor (`ShardLayout`), so a rank never loads what it does not hold.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from orca_worker.config import ModelConfig
from orca_worker.errors import MissingWeightsError, ModelLoadError
from orca_worker.models.base import CausalLM
from orca_worker.models.registry import get_model_class

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
LOAD_FORMATS = ("safetensors", "random")
RANDOM_INIT_STD = 0.02


@dataclass(frozen=True)
class ShardLayout:
    """Which part of the full tensor a module's weight holds, along one dimension.

    The full weight is the concatenation of `full_sizes` parts along `dim` (q|k|v, gate|up,
    or a single part); this weight holds `pieces[i] = (start, length)` of part i, stacked in
    order. A module without a layout holds every part whole. Biases follow a dim-0 layout
    and are whole under a dim-1 one.
    """

    dim: int
    full_sizes: tuple[int, ...]
    pieces: tuple[tuple[int, int], ...]

    @classmethod
    def whole(cls, sizes: tuple[int, ...]) -> ShardLayout:
        """The layout of an unsharded weight made of `sizes` row blocks."""
        return cls(0, sizes, tuple((0, n) for n in sizes))


@dataclass(frozen=True)
class WeightSpec:
    """One copy: `length` slices of a checkpoint tensor along `dim` (in the parameter's
    orientation, i.e. after any transpose) into the parameter."""

    checkpoint_name: str
    param_name: str
    dim: int
    src_start: int
    dst_start: int
    length: int
    # The checkpoint tensor's full shape, in the parameter's orientation.
    full_shape: tuple[int, ...]
    transpose: bool = False


def load_model(
    config: ModelConfig,
    model_dir: str | Path,
    dtype: torch.dtype,
    device: torch.device,
    load_format: str = "safetensors",
    seed: int = 0,
    prepare: Callable[[CausalLM], None] | None = None,
) -> CausalLM:
    """Build the model for `config` in `dtype`, let `prepare` rewrite it while it is still
    on the meta device, then allocate it on `device` and load (or randomize) its weights."""
    if load_format not in LOAD_FORMATS:
        raise ModelLoadError(f"unknown load_format {load_format!r}; expected one of {LOAD_FORMATS}")
    model_cls = get_model_class(config.architecture)
    with torch.no_grad():
        with torch.device("meta"), _default_dtype(dtype):
            model = model_cls(config)
        if prepare is not None:
            prepare(model)
        materialize(model, device)
        if load_format == "random":
            init_random(model, seed)
        else:
            load_safetensors(model, Path(model_dir))
    return model.eval()


def materialize(model: nn.Module, device: torch.device) -> None:
    """Allocate every meta parameter (uninitialized) on `device`; move buffers there."""
    for module in model.modules():
        for name, param in module._parameters.items():
            if param is not None and param.is_meta:
                data = torch.empty_like(param, device=device)
                module._parameters[name] = nn.Parameter(data, requires_grad=False)
        for name, buffer in module._buffers.items():
            if buffer is not None:
                if buffer.is_meta:
                    raise RuntimeError(f"buffer {name!r} was built on the meta device")
                module._buffers[name] = buffer.to(device)


def layout_of(module: nn.Module, param: torch.Tensor) -> ShardLayout:
    """The layout of one of `module`'s parameters (see ShardLayout)."""
    layout = getattr(module, "shard_layout", None)
    if layout is not None and layout.dim < param.dim():
        return layout
    sizes = getattr(module, "output_sizes", None) or (param.shape[0],)
    return ShardLayout.whole(tuple(sizes))


def checkpoint_specs(model: CausalLM) -> list[WeightSpec]:
    """Where every checkpoint tensor the model needs goes, derived from its parameter names
    and layouts: fused projections read one checkpoint tensor per `packed_modules` part (or
    consecutive blocks of one tensor when the checkpoint fuses them too)."""
    modules = dict(model.named_modules())
    specs = []
    for param_name, param in model.named_parameters():
        module_name, _, leaf = param_name.rpartition(".")
        parent, _, attr = module_name.rpartition(".")
        layout = layout_of(modules[module_name], param)
        parts = model.packed_modules.get(attr)
        if parts is not None and len(parts) != len(layout.full_sizes):
            raise ModelLoadError(f"{module_name}: {len(parts)} packed parts, layout has {layout}")
        src_base, dst = 0, 0
        for i, (full, (start, length)) in enumerate(
            zip(layout.full_sizes, layout.pieces, strict=True)
        ):
            ckpt_module = module_name
            if parts is not None:  # one checkpoint tensor per part
                ckpt_module = f"{parent}.{parts[i]}" if parent else parts[i]
            name = f"{ckpt_module}.{leaf}"
            for ours, theirs in model.checkpoint_renames:
                name = name.replace(ours, theirs)
            full_shape = list(param.shape)
            full_shape[layout.dim] = full if parts is not None else sum(layout.full_sizes)
            transpose = name.endswith(model.transposed_weights)
            specs.append(
                WeightSpec(
                    name,
                    param_name,
                    layout.dim,
                    src_base + start,
                    dst,
                    length,
                    tuple(full_shape),
                    transpose,
                )
            )
            dst += length
            if parts is None:
                src_base += full
    return specs


def load_safetensors(model: CausalLM, model_dir: Path) -> None:
    """Copy the slices of the tensors the model needs from `model.safetensors` or a sharded
    index; rows a layout pads (past the end of a vocabulary) are zeroed."""
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
    filled: dict[str, int] = defaultdict(int)
    for file_name, file_specs in by_file.items():
        path = model_dir / file_name
        if not path.is_file():
            raise MissingWeightsError(
                f"weight file {file_name!r} listed in {INDEX_FILE} is missing"
            )
        # Read straight onto the target device: a GPU load skips a host copy.
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            for spec in file_specs:
                target = params[spec.param_name].data
                target.narrow(spec.dim, spec.dst_start, spec.length).copy_(
                    _read_slice(f, names[spec.checkpoint_name], spec, file_name, target)
                )
                filled[spec.param_name] = max(filled[spec.param_name], spec.dst_start + spec.length)
    for spec in specs:  # zero what no checkpoint row fills (vocabulary padding)
        target = params[spec.param_name].data
        end = filled[spec.param_name]
        if end < target.shape[spec.dim]:
            target.narrow(spec.dim, end, target.shape[spec.dim] - end).zero_()


def _read_slice(f, name: str, spec: WeightSpec, file_name: str, target: torch.Tensor):
    """The spec's slice of checkpoint tensor `name`, in the parameter's orientation."""
    view = f.get_slice(name)
    shape = tuple(view.get_shape())
    if spec.transpose and len(shape) == 2:
        shape = shape[::-1]
    expected = spec.full_shape
    if shape != expected:
        raise ModelLoadError(
            f"tensor {spec.checkpoint_name!r} in {file_name} has shape {shape}, "
            f"the model expects {expected}"
        )
    disk_dim = 1 - spec.dim if spec.transpose and len(shape) == 2 else spec.dim
    index = [slice(None)] * len(shape)
    index[disk_dim] = slice(spec.src_start, spec.src_start + spec.length)
    tensor = view[tuple(index)]
    return tensor.t() if spec.transpose and len(shape) == 2 else tensor


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
