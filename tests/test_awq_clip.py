"""AWQ's clipping search (`qviz.awq_clip`) against a brute-force search per (row, group)."""

import pytest
import torch

from qviz.awq_clip import clip_search, group_absmax
from qviz.quant import QuantSpec, fake_quantize


def test_clip_search_matches_brute_force():
    """Each (row, group) picks the ratio with the smallest error of its own group's output contribution."""
    gen = torch.Generator().manual_seed(3)
    W = torch.randn(6, 16, generator=gen)
    W[0, 2] = 6.0  # an outlier weight worth clipping
    X = torch.randn(40, 16, generator=gen)
    spec = QuantSpec(bits=3, symmetric=False, group_size=8)
    result = clip_search(W, 2 * X.T @ X / X.shape[0], spec)
    ratios = [1 - i / 20 for i in range(10)]
    for row in range(6):
        for g in range(2):
            cols = slice(8 * g, 8 * g + 8)
            w, x = W[row : row + 1, cols], X[:, cols]
            errors = []
            for r in ratios:
                m = w.abs().max() * r
                q = fake_quantize(w.clamp(-m, m), QuantSpec(bits=3, symmetric=False, granularity="channel"))
                errors.append(((x @ (q - w).T) ** 2).mean().item())
            assert result.ratio[row, g].item() == pytest.approx(
                ratios[min(range(10), key=errors.__getitem__)]
            )
    assert (result.ratio < 1).any()
    assert result.error_after <= result.error_before


def test_group_absmax():
    W = torch.tensor([[1.0, -3.0, 2.0, 0.5], [-0.25, 0.5, -4.0, 1.0]])
    assert group_absmax(W, QuantSpec(bits=4, group_size=2)).tolist() == [[3.0, 2.0], [0.5, 4.0]]
    assert group_absmax(W, QuantSpec(bits=4)).tolist() == [[3.0], [4.0]]


def test_bad_arguments_are_refused():
    W, X = torch.randn(4, 8), torch.randn(10, 8)
    with pytest.raises(ValueError, match="per row or group"):
        clip_search(W, X.T @ X, QuantSpec(bits=4, granularity="tensor"))
    with pytest.raises(ValueError, match="H"):
        clip_search(W, X, QuantSpec(bits=4))
