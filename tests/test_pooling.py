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
    xf = np.real(np.fft.ifft(np.fft.ifftshift(np.fft.fftshift(np.fft.fft(x, axis=-1), axes=-1) * g, axes=-1), axis=-1))
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
