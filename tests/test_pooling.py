"""LAST pooling against a literal transcription of the reference formula (DESIGN.md), fp32, 1e-6."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lastvit_eval.errors import InputError
from lastvit_eval.pooling import PoolingSpec, last_pool, patch_scores, pool


def reference_last(x: torch.Tensor, k: int, sigma: float | None = None, formula: str = "code", eps: float = 1e-6):
    """Literal transcription, written independently of the package, in float64 numpy."""
    x = x.double().numpy()
    d = x.shape[-1]
    sigma = math.sqrt(d) if sigma is None else sigma
    t = np.arange(-d // 2 + 1, d // 2 + 1)
    g = np.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.max()
    with np.errstate(invalid="ignore"):  # inf inputs give NaN scores, as in the reference; NaN sorts last
        xf = np.real(np.fft.ifft(np.fft.ifftshift(np.fft.fftshift(np.fft.fft(x, axis=-1), axes=-1) * g, axes=-1),
                                 axis=-1))
        s = x / np.abs(xf - x) if formula == "code" else xf / (np.abs(xf - x) + eps)
    b, n, _ = x.shape
    pooled = np.zeros((b, d))
    votes = np.zeros((b, n))
    for i in range(b):
        for c in range(d):
            idx = np.argsort(-s[i, :, c], kind="stable")[:k]
            pooled[i, c] = x[i, idx, c].mean()
            votes[i, idx] += 1
    return pooled, votes, s


@pytest.mark.parametrize("d", [384, 768, 1024])
@pytest.mark.parametrize("k", [1, 3, 10])
@pytest.mark.parametrize("formula", ["code", "paper"])
def test_last_matches_reference(d, k, formula):
    g = torch.Generator().manual_seed(d + k)
    x = torch.randn(2, 49, d, generator=g)
    spec = PoolingSpec(kind="last", topk=k, formula=formula)
    got = last_pool(x, spec)
    ref_pooled, ref_votes, _ = reference_last(x, k, formula=formula)
    np.testing.assert_allclose(got.token.numpy(), ref_pooled, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(got.votes.numpy(), ref_votes)
    assert got.votes.sum(dim=1).eq(k * d).all()


def test_custom_sigma_matches_reference():
    x = torch.randn(1, 16, 384, generator=torch.Generator().manual_seed(1))
    got = last_pool(x, PoolingSpec(kind="last", topk=2, sigma=5.0))
    ref, _, _ = reference_last(x, 2, sigma=5.0)
    np.testing.assert_allclose(got.token.numpy(), ref, atol=1e-6)


@pytest.mark.parametrize("formula", ["code", "paper"])
def test_no_nan_on_constant_or_repeated_tokens(formula):
    spec = PoolingSpec(kind="last", topk=2, formula=formula)
    zeros = torch.zeros(1, 10, 64)
    const = torch.full((1, 10, 64), 3.0)
    repeated = torch.randn(1, 1, 64).repeat(1, 10, 1)
    for x in (zeros, const, repeated):
        out = last_pool(x, spec)
        assert torch.isfinite(out.token).all()
        # every patch is the same token, so the pooled token is that token
        torch.testing.assert_close(out.token, x[:, 0], atol=1e-6, rtol=0)


def test_cls_and_gap():
    tokens = torch.randn(3, 1 + 9, 32)
    torch.testing.assert_close(pool(tokens, 1, PoolingSpec("cls")).token, tokens[:, 0])
    torch.testing.assert_close(pool(tokens, 1, PoolingSpec("gap")).token, tokens[:, 1:].mean(1))
    with pytest.raises(InputError):
        pool(tokens[:, 1:], 0, PoolingSpec("cls"))


def test_patch_scores_are_cosines():
    patches, pooled = torch.randn(2, 5, 8), torch.randn(2, 8)
    s = patch_scores(patches, pooled)
    ref = np.einsum("bnd,bd->bn", patches.numpy(), pooled.numpy())
    ref /= np.linalg.norm(patches.numpy(), axis=-1) * np.linalg.norm(pooled.numpy(), axis=-1)[:, None]
    np.testing.assert_allclose(s.numpy(), ref, atol=1e-6)


def test_spec_parse_and_names():
    assert PoolingSpec.parse("last:k=5,sigma=20,formula=paper") == PoolingSpec("last", 5, 20.0, "paper")
    assert PoolingSpec.parse("cls").name == "cls"
    assert PoolingSpec("last", 1).name == "last-k1"
    for bad in ("mean", "cls:k=2", "last:q=1"):
        with pytest.raises(InputError):
            PoolingSpec.parse(bad)
    with pytest.raises(InputError):
        PoolingSpec("last", topk=0)


def test_even_dim_mask_is_one_bin_off_as_in_the_reference():
    """Documented reference quirk: for even D the mask peaks one bin below DC; for odd D it peaks at DC."""
    from lastvit_eval.pooling import gaussian_lowpass_kernel

    g = gaussian_lowpass_kernel(768, None).double().numpy()
    dc = 768 // 2  # fftshift puts DC at index D // 2
    assert g[dc] == pytest.approx(math.exp(-1 / (2 * 768)), abs=1e-7)  # 0.99935
    assert g[dc - 1] == 1.0  # t = 0 sits one bin below DC
    g = gaussian_lowpass_kernel(385, None).double().numpy()
    assert g[385 // 2] == 1.0 and g[385 // 2 - 1] == pytest.approx(g[385 // 2 + 1], abs=1e-7)


@pytest.mark.parametrize("d", [15, 385, 769])
@pytest.mark.parametrize("k", [1, 4])
def test_last_matches_reference_odd_dim(d, k):
    x = torch.randn(2, 37, d, generator=torch.Generator().manual_seed(d * 10 + k))
    got = last_pool(x, PoolingSpec(kind="last", topk=k))
    ref_pooled, ref_votes, _ = reference_last(x, k)
    np.testing.assert_allclose(got.token.numpy(), ref_pooled, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(got.votes.numpy(), ref_votes)


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("formula", ["code", "paper"])
def test_ties_go_to_the_lower_patch_index(k, formula):
    """Exact copies of a patch tie on every channel: the reference (stable order) picks the first copies."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 20, 64, generator=g)
    x[:, [4, 11, 17]] = x[:, 2:3] * 0 + torch.randn(2, 1, 64, generator=g) * 3  # three identical patches
    x[:, 9] = x[:, 4]
    got = last_pool(x, PoolingSpec(kind="last", topk=k, formula=formula))
    ref_pooled, ref_votes, s = reference_last(x, k, formula=formula)
    assert (s[:, 4] == s[:, 11]).all()  # the copies really tie
    np.testing.assert_allclose(got.token.numpy(), ref_pooled, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(got.votes.numpy(), ref_votes)


def test_inf_token_matches_reference():
    """An infinite entry makes its patch's low-pass NaN: the reference never prefers it (NaN sorts last)."""
    x = torch.randn(1, 12, 32, generator=torch.Generator().manual_seed(8))
    x[0, 5, 3] = float("inf")
    x[0, 8, 0] = float("-inf")
    got = last_pool(x, PoolingSpec(kind="last", topk=2))
    ref_pooled, ref_votes, _ = reference_last(x, 2)
    assert torch.isfinite(got.token).all()
    np.testing.assert_allclose(got.token.numpy(), ref_pooled, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(got.votes.numpy(), ref_votes)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k", [1, 3])
def test_half_precision_tokens_match_reference(dtype, k):
    """fp16/bf16 tokens: scored in float32; the reference sees the same (exactly representable) values."""
    x = torch.randn(2, 49, 384, generator=torch.Generator().manual_seed(9 + k)).to(dtype)
    got = last_pool(x, PoolingSpec(kind="last", topk=k))
    ref_pooled, ref_votes, _ = reference_last(x, k)
    assert got.token.dtype == torch.float32
    np.testing.assert_allclose(got.token.numpy(), ref_pooled, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(got.votes.numpy(), ref_votes)
