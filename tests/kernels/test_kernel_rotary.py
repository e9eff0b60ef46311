"""Rotary embedding kernel (NeoX and GPT-J layouts) against its torch reference."""

import pytest
import torch

pytest.importorskip("triton")

from kernel_testing import DTYPES, close

from orca_kernels.rotary import apply_rotary, apply_rotary_ref

MAX_POS = 64


def cos_sin_cache(rotary_dim: int, base: float = 10000.0) -> torch.Tensor:
    inv_freq = 1.0 / base ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim)
    freqs = torch.arange(MAX_POS).float()[:, None] * inv_freq[None, :]
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1)  # [MAX_POS, rotary_dim]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize(
    ("tokens", "hq", "hkv", "head_dim", "rotary_dim"),
    [(1, 1, 1, 8, 8), (7, 4, 2, 64, 64), (11, 3, 1, 40, 40), (5, 2, 2, 32, 16)],
)
def test_apply_rotary(tokens, hq, hkv, head_dim, rotary_dim, is_neox, dtype):
    g = torch.Generator(torch.get_default_device()).manual_seed(0)
    q = torch.randn(tokens, hq, head_dim, generator=g).to(dtype)
    k = torch.randn(tokens, hkv, head_dim, generator=g).to(dtype)
    positions = torch.randint(0, MAX_POS, (tokens,), generator=g)
    cache = cos_sin_cache(rotary_dim)
    q_ref, k_ref = apply_rotary_ref(q.clone(), k.clone(), positions, cache, is_neox)
    q_out, k_out = q.clone(), k.clone()
    ret = apply_rotary(q_out, k_out, positions, cache, is_neox)
    assert ret[0] is q_out and ret[1] is k_out  # in place
    close(q_out, q_ref, dtype)
    close(k_out, k_ref, dtype)


def test_strided_views_of_fused_qkv():
    g = torch.Generator(torch.get_default_device()).manual_seed(1)
    t, hq, hkv, d = 6, 4, 2, 16
    qkv = torch.randn(t, (hq + 2 * hkv) * d, generator=g)
    positions = torch.arange(t)
    cache = cos_sin_cache(d)

    def views(buf):
        q, k, _ = buf.split([hq * d, hkv * d, hkv * d], dim=-1)
        return q.view(t, hq, d), k.view(t, hkv, d)

    expected = qkv.clone()
    apply_rotary_ref(*views(expected), positions, cache, True)
    apply_rotary(*views(qkv), positions, cache, True)
    close(qkv, expected, torch.float32)  # v untouched, q and k rotated


@pytest.mark.parametrize("is_neox", [True, False])
def test_reference_matches_rotate_half_formula(is_neox):
    g = torch.Generator(torch.get_default_device()).manual_seed(2)
    t, h, d = 5, 2, 8
    x = torch.randn(t, h, d, generator=g)
    positions = torch.randint(0, MAX_POS, (t,), generator=g)
    cache = cos_sin_cache(d)
    cos, sin = cache[positions, : d // 2][:, None], cache[positions, d // 2 :][:, None]
    if is_neox:  # pairs (i, i + d/2): x * cos + rotate_half(x) * sin
        pairs = x
        cos2, sin2 = torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)
        rotated = torch.cat((-pairs[..., d // 2 :], pairs[..., : d // 2]), -1)
        expected = pairs * cos2 + rotated * sin2
    else:  # pairs (2i, 2i + 1)
        cos2, sin2 = cos.repeat_interleave(2, -1), sin.repeat_interleave(2, -1)
        rotated = torch.stack((-x[..., 1::2], x[..., 0::2]), -1).flatten(-2)
        expected = x * cos2 + rotated * sin2
    q, _ = apply_rotary_ref(x.clone(), x.clone(), positions, cache, is_neox)
    torch.testing.assert_close(q, expected)
