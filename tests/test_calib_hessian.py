import pytest
import torch

from qviz.calib.hessian import Hessian, HessianSet


def hessian(X):
    return 2 * X.T @ X / X.shape[0]


def test_hessian_running_average_equals_one_shot():
    X = torch.randn(300, 48, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    h = Hessian(48, dtype=torch.float64)
    for chunk in X.split([1, 99, 200]):
        h.add_batch(chunk)
    h.add_batch(X[:10].reshape(2, 5, 48))  # (batch, seq, features) is flattened to tokens
    Xall = torch.cat([X, X[:10]])
    torch.testing.assert_close(h.H, hessian(Xall))
    assert h.n_tokens == 310


@pytest.mark.parametrize("n", [64, 576, 1537])
def test_hessian_from_half_the_blocks_equals_the_full_product(n):
    X = torch.randn(300, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    h = Hessian(n, torch.float64)
    h.add_batch(X[:100])
    h.add_batch(X[100:])
    torch.testing.assert_close(h.H, 2 * X.T @ X / 300, rtol=1e-12, atol=1e-12)


def test_hessian_set_shares_one_hessian_between_linears_reading_one_tensor():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    hessians = HessianSet()
    for _ in range(2):  # two calls: q and k read x, o reads y (equal values, another tensor)
        hessians.new_call()
        hessians.add("q", x)
        hessians.add("k", x)
        hessians.add("o", y)
    assert hessians.hessians["q"] is hessians.hessians["k"] is not hessians.hessians["o"]
    assert hessians.hessians["q"].n_tokens == 20  # x counted once per call, not once per linear
    torch.testing.assert_close(hessians.hessians["q"].H, hessian(x.reshape(-1, 8)))


def test_bad_values():
    h = Hessian(16)
    with pytest.raises(ValueError, match="no calibration tokens"):
        _ = h.H
    with pytest.raises(ValueError, match="no tokens"):
        h.add_batch(torch.zeros(0, 16))
    with pytest.raises(ValueError, match="NaN"):
        h.add_batch(torch.full((2, 16), float("nan")))
    with pytest.raises(ValueError, match="features"):
        h.add_batch(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="positive"):
        Hessian(0)
    # One bad value among good ones is found (from diag(XᵀX)), and a refused batch changes nothing.
    X = torch.randn(5, 16)
    h.add_batch(X)
    before = h.H.clone()
    for bad in (float("nan"), float("inf"), -float("inf")):
        Y = torch.randn(7, 16)
        Y[3, 11] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            h.add_batch(Y)
        assert h.n_tokens == 5 and torch.equal(h.H, before)
