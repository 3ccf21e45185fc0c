import math

import pytest
import torch

from qviz.calib.hessian import Hessian
from qviz.calib.report import linear_report, output_error, relative_output_error
from qviz.quant import QuantSpec, fake_quantize


def test_linear_report_output_error():
    g = torch.Generator().manual_seed(0)
    W, X = torch.randn(8, 16, generator=g), torch.randn(50, 16, generator=g)
    Q = fake_quantize(W, QuantSpec(bits=3))
    h = Hessian(16)
    h.add_batch(X)
    row = linear_report("fc", W, Q, h.H)
    direct = ((W - Q) @ X.T).pow(2).sum() / (W @ X.T).pow(2).sum()
    assert row["output_rel_error"] == pytest.approx(direct.item(), rel=1e-4)
    assert row["output_mse"] == pytest.approx(((W - Q) @ X.T).pow(2).mean().item(), rel=1e-4)
    assert row["shape"] == (8, 16) and row["sqnr_db"] > 0


def test_relative_output_error_of_a_dead_linear_is_nan():
    H = torch.zeros(4, 4)
    W = torch.randn(3, 4)
    assert math.isnan(relative_output_error(W, torch.zeros_like(W), H))
    assert output_error(W, torch.zeros_like(W), H) == 0.0
