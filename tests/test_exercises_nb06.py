import torch

from qviz.exercises import nb06


def _layer():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 200, generator=g)
    X[:, [7, 150]] *= 40  # the two channels with large activations (1% of 200)
    W = torch.randn(16, 200, generator=g)
    W[:, [3, 90]] *= 10  # large weights elsewhere: a distractor
    return X, W


def test_salient_channels(capsys):
    X, W = _layer()
    assert nb06.check_salient_channels(X, W, [150, 7])
    assert nb06.check_salient_channels(X, W, torch.tensor([7, 150]))
    assert not nb06.check_salient_channels(X, W, [3, 90])
    assert "largest *weights*" in capsys.readouterr().out
    assert not nb06.check_salient_channels(X, W, [7])
    assert "2 indices" in capsys.readouterr().out
    assert not nb06.check_salient_channels(X, W, [7, 8])
    assert "1 of 2 right" in capsys.readouterr().out
    assert not nb06.check_salient_channels(X, W, "seven")
    assert not nb06.check_salient_channels(X, W, None)


def test_gemma_fold(capsys):
    weight = torch.tensor([0.5, -0.2, 1.0])
    s = torch.tensor([2.0, 0.5, 4.0])
    assert nb06.check_gemma_fold(weight, s, torch.tensor([-0.25, 0.6, -0.5]))  # (1 + w)/s − 1
    assert not nb06.check_gemma_fold(weight, s, weight / s)
    assert "Llama's fold" in capsys.readouterr().out
    assert not nb06.check_gemma_fold(weight, s, weight)
    assert not nb06.check_gemma_fold(weight, s, None)
    assert "shape (3,)" in capsys.readouterr().out


def test_best_alpha(capsys):
    alphas = [0.0, 0.25, 0.5, 0.75]
    losses = [4.0, 2.0, 1.0, 3.0]
    assert nb06.check_best_alpha(alphas, losses, 0.5)
    assert "0.25× plain rounding" in capsys.readouterr().out
    assert not nb06.check_best_alpha(alphas, losses, 0.0)
    assert "plain rounding" in capsys.readouterr().out
    assert not nb06.check_best_alpha(alphas, losses, 0.75)
    assert not nb06.check_best_alpha(alphas, losses, None)
