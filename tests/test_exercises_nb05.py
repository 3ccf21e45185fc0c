import torch

from qviz.exercises import nb05


def toy():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2000, generator=g, dtype=torch.float64)
    return torch.tensor([0.8, 0.6], dtype=torch.float64), torch.stack([z + 0.5 * torch.randn_like(z), z], 1)


def test_best_rounding(capsys):
    w, X = toy()
    assert nb05.check_best_rounding((1.0, 0.0), w, X)
    assert "less than rounding each weight" in capsys.readouterr().out
    assert not nb05.check_best_rounding((1, 1), w, X)  # round to nearest: not the joint optimum here
    assert "another grid point does better" in capsys.readouterr().out
    assert not nb05.check_best_rounding((2, 0), w, X)
    assert "rounds down or up" in capsys.readouterr().out
    assert not nb05.check_best_rounding("one", w, X)
    # uncorrelated inputs: rounding each weight to nearest is the best joint choice
    g = torch.Generator().manual_seed(1)
    assert nb05.check_best_rounding((1, 1), w, torch.randn(4000, 2, generator=g, dtype=torch.float64))


def test_compensated_weight(capsys):
    w, X = toy()
    H = 2 * X.T @ X / len(X)
    Hinv = torch.linalg.inv(H)
    want = (w[1] - (w[0] - 1) * Hinv[0, 1] / Hinv[0, 0]).item()
    assert 0.3 < want < 0.5  # w₂ absorbs most of w₁'s error of −0.2 (x₁ ≈ x₂), and then rounds to 0
    assert nb05.check_compensated_weight(want, w, H)
    assert nb05.check_compensated_weight(round(want, 4), w, H)
    assert not nb05.check_compensated_weight(0.6, w, H)
    assert "must change" in capsys.readouterr().out
    assert not nb05.check_compensated_weight(0.8, w, H)
    assert not nb05.check_compensated_weight(None, w, H)


def test_calibration_effect(capsys):
    results = {"RTN": 40.0, "GPTQ britannica": 30.0, "GPTQ pydoc": 45.0}
    assert nb05.check_calibration_effect(results, "GPTQ pydoc")
    assert not nb05.check_calibration_effect(results, "RTN")
    assert not nb05.check_calibration_effect(results, "GPTQ")
    assert "one of" in capsys.readouterr().out
    assert not nb05.check_calibration_effect({"RTN": 1.0}, "RTN")
