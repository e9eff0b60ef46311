"""Building blocks shared by every model family: linear, norms, rotary, MLPs, attention.

All of them work on the packed [num_tokens, features] tensor of a step. Parameters are
created uninitialized (`torch.empty`, in the default dtype and device of the caller's
context): the loader fills them from a checkpoint or with random values.

The norms, the rotary embedding and the MLP activations have two paths: plain torch (the
default), and `orca_kernels`' fused functions once `use_fused_kernels(model)` has switched
the model over (the runner does so for kernels="triton"). Those functions run the Triton
kernel where `orca_kernels.dispatch.use_triton` says so (CUDA) and their torch reference
elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from orca_kernels.activations import bias_gelu, silu_mul
from orca_kernels.norms import add_rms_norm, layer_norm
from orca_kernels.rotary import apply_rotary
from orca_worker.attention import AttentionMetadata, PagedAttention
from orca_worker.config import RopeConfig
from orca_worker.errors import UnsupportedArchitectureError


def _param(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape), requires_grad=False)


# The config.json activations a fused kernel computes: name -> bias_gelu's `approximate`.
GELU_APPROXIMATE = {
    "gelu": "none",
    "gelu_new": "tanh",
    "gelu_fast": "tanh",
    "gelu_pytorch_tanh": "tanh",
}
SILU_NAMES = ("silu", "swish")

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
}


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation function that config.json names."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"unsupported activation {name!r}; supported: {sorted(ACTIVATIONS)}"
        ) from None


class Linear(nn.Module):
    """y = x W^T + b. `output_sizes` names the row blocks of a fused projection (q|k|v)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        output_sizes: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.weight = _param(out_features, in_features)
        self.bias = _param(out_features) if bias else None
        self.output_sizes = output_sizes or (out_features,)
        assert sum(self.output_sizes) == out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the projection."""
        return F.linear(x, self.weight, self.bias)


class Embedding(nn.Module):
    """A lookup table of [num_embeddings, dim] rows."""

    def __init__(self, num_embeddings: int, dim: int) -> None:
        super().__init__()
        self.weight = _param(num_embeddings, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows for `ids`."""
        return F.embedding(ids, self.weight)


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 (as transformers does), with an optional fused residual add."""

    fused = False  # use_fused_kernels() sets it: orca_kernels' add_rms_norm

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = _param(dim)
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """norm(x), or (norm(x + residual), x + residual) when a residual is given."""
        if self.fused:
            out, summed = add_rms_norm(x, residual, self.weight, self.eps)
            return out if residual is None else (out, summed)
        if residual is not None:
            x = x + residual
            residual = x
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        out = self.weight * xf.to(x.dtype)
        return out if residual is None else (out, residual)


class LayerNorm(nn.Module):
    """LayerNorm; `affine=False` (OPT's layer_norm_elementwise_affine) drops weight and bias."""

    def __init__(self, dim: int, eps: float, affine: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = _param(dim) if affine else None
        self.bias = _param(dim) if affine else None

    fused = False  # use_fused_kernels() sets it: orca_kernels' layer_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize the last dimension."""
        if self.fused:
            return layer_norm(x, None, self.weight, self.bias, self.eps)[0]
        return F.layer_norm(x, (self.dim,), self.weight, self.bias, self.eps)


def rope_inv_freq(head_dim: int, rope: RopeConfig) -> torch.Tensor:
    """Inverse frequencies [head_dim / 2] in float32, with linear or Llama 3 scaling, computed
    on the CPU (also when the model is being built on the meta device)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
    inv_freq = 1.0 / (rope.theta**exponents)
    if rope.rope_type == "default":
        return inv_freq
    if rope.rope_type == "linear":
        return inv_freq / rope.factor
    if rope.rope_type == "llama3":
        # Long wavelengths are slowed by `factor`, short ones kept, the band between blended.
        low_wavelen = rope.original_max_position_embeddings / rope.low_freq_factor
        high_wavelen = rope.original_max_position_embeddings / rope.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
        smooth = (rope.original_max_position_embeddings / wavelen - rope.low_freq_factor) / (
            rope.high_freq_factor - rope.low_freq_factor
        )
        blended = (1 - smooth) * scaled / rope.factor + smooth * scaled
        is_mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(is_mid, blended, scaled)
    raise UnsupportedArchitectureError(
        f"unsupported rope_type {rope.rope_type!r}; supported: default, linear, llama3"
    )


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (rotate-half layout), cos/sin computed per step from positions."""

    def __init__(self, head_dim: int, rope: RopeConfig) -> None:
        super().__init__()
        # Not a parameter: derived from the config, never read from a checkpoint.
        self.register_buffer("inv_freq", rope_inv_freq(head_dim, rope), persistent=False)
        # [max positions, head_dim] cos | sin rows for apply_rotary, once use_fused_kernels
        # has built it; None: the torch path.
        self.cos_sin_cache: torch.Tensor | None = None

    def build_cos_sin_cache(self, max_positions: int) -> None:
        """Precompute float32 cos | sin for positions [0, max_positions) (the fused path)."""
        positions = torch.arange(max_positions, dtype=torch.float32, device=self.inv_freq.device)
        freqs = positions[:, None] * self.inv_freq.float()[None, :]
        self.cos_sin_cache = torch.cat((freqs.cos(), freqs.sin()), dim=-1)

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q [T, Hq, D] and k [T, Hkv, D] by their tokens' positions [T]."""
        if self.cos_sin_cache is not None:  # in place, one launch each for q and k
            return apply_rotary(q, k, positions, self.cos_sin_cache, is_neox=True)
        freqs = positions[:, None].float() * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # [T, 1, D]
        cos, sin = emb.cos().to(q.dtype), emb.sin().to(q.dtype)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)), with gate and up fused into one projection."""

    def __init__(self, hidden: int, intermediate: int, act: str, bias: bool) -> None:
        super().__init__()
        self.gate_up_proj = Linear(hidden, 2 * intermediate, bias, (intermediate, intermediate))
        self.down_proj = Linear(intermediate, hidden, bias)
        self.act = get_activation(act)
        self.act_name = act

    fused = False  # use_fused_kernels() sets it when the activation is SiLU: silu_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP to packed tokens."""
        if self.fused:
            return self.down_proj(silu_mul(self.gate_up_proj(x)))
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(self.act(gate) * up)


class MLP(nn.Module):
    """fc_out(act(fc_in(x))): the GPT-2 / OPT feed-forward block."""

    def __init__(self, hidden: int, intermediate: int, act: str, bias: bool) -> None:
        super().__init__()
        self.fc_in = Linear(hidden, intermediate, bias)
        self.fc_out = Linear(intermediate, hidden, bias)
        self.act = get_activation(act)
        self.act_name = act

    fused = False  # use_fused_kernels() sets it when the activation is a GeLU: bias_gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP to packed tokens."""
        if self.fused:  # the bias add goes into the activation's kernel
            hidden = F.linear(x, self.fc_in.weight)
            return self.fc_out(bias_gelu(hidden, self.fc_in.bias, GELU_APPROXIMATE[self.act_name]))
        return self.fc_out(self.act(self.fc_in(x)))


class Attention(nn.Module):
    """Fused QKV projection, optional per-head q/k RMSNorm and rotary, paged attention, output."""

    def __init__(
        self,
        hidden: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        qkv_bias: bool,
        out_bias: bool,
        scale: float,
        rotary: RotaryEmbedding | None = None,
        qk_norm_eps: float | None = None,
        sliding_window: int | None = None,
    ) -> None:
        super().__init__()
        self.q_size, self.kv_size = num_heads * head_dim, num_kv_heads * head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.qkv_proj = Linear(
            hidden,
            self.q_size + 2 * self.kv_size,
            qkv_bias,
            (self.q_size, self.kv_size, self.kv_size),
        )
        self.o_proj = Linear(self.q_size, hidden, out_bias)
        self.q_norm = RMSNorm(head_dim, qk_norm_eps) if qk_norm_eps is not None else None
        self.k_norm = RMSNorm(head_dim, qk_norm_eps) if qk_norm_eps is not None else None
        # A plain attribute, not a submodule: the model owns the one shared RotaryEmbedding.
        self._rotary = [rotary] if rotary is not None else []
        self.attn = PagedAttention(num_heads, num_kv_heads, head_dim, scale, sliding_window)

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """x [T, hidden] -> [T, hidden]."""
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:  # Qwen3: per-head norm before rope
            q, k = self.q_norm(q), self.k_norm(k)
        if self._rotary:
            q, k = self._rotary[0](positions, q, k)
        out = self.attn(q, k, v, meta)
        return self.o_proj(out.reshape(-1, self.q_size))


def use_fused_kernels(model: nn.Module, max_positions: int) -> int:
    """Switch the model's norms, rotary embeddings and (SiLU-gated or GeLU) MLPs to the
    `orca_kernels` functions; rotary tables cover positions [0, max_positions). Returns how
    many modules were switched."""
    switched = 0
    for module in model.modules():
        if isinstance(module, RotaryEmbedding):
            module.build_cos_sin_cache(max_positions)
        elif _has_fused_kernel(module):
            module.fused = True
        else:
            continue
        switched += 1
    return switched


def _has_fused_kernel(module: nn.Module) -> bool:
    if isinstance(module, RMSNorm | LayerNorm):
        return True
    if isinstance(module, GatedMLP):
        return module.act_name in SILU_NAMES
    return isinstance(module, MLP) and module.act_name in GELU_APPROXIMATE
