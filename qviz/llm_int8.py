"""LLM.int8() (Dettmers et al. 2022): the outlier columns of X in float, every other column in INT8.

From about 6.7B parameters on, a few hidden dimensions (columns j of a linear's input X) carry values far
larger than the rest, in most tokens. An INT8 scale for a row of X is then set by those few columns and rounds
the others to a handful of levels (`qviz.act`), and a scale per column cannot be factored out of an integer
matmul. LLM.int8() splits the product Y = X Wᵀ by input column instead: the columns with any large value,
the set O, are multiplied in 16-bit float; the others in INT8, with one scale per row of X and one per row of
W ("vector-wise quantization"). In the paper's notation, with outlier threshold α (6.0 in the paper),

    C_f16 ≈ Σ_{h ∈ O} X^h_f16 W^h_f16  +  S_f16 · Σ_{h ∉ O} X^h_i8 W^h_i8        O = {h : max_t |X[t, h]| > α}

and in this module's, with W (out_features, in_features):

    Y = X[:, O] W[:, O]ᵀ  +  (s_x s_wᵀ) ⊙ (C_x C_wᵀ)        the second term over the columns j ∉ O only

    s_x = max_j |X[t, j]| / 127 per row t,  s_w = max_j |W[o, j]| / 127 per row o   (over the columns j ∉ O)
    C_x = round(X / s_x),  C_w = round(W / s_w)                                    INT8 codes in -127..127

The outlier columns are few (the paper keeps about 99.9% of the values in 8 bits), so the product is almost
all INT8, yet the model keeps its 16-bit quality. Here the float part runs in float32.

Symbols -> variables: X `X` (tokens, in_features), the input x (..., in_features) flattened; W `W`;
α `threshold` (a column is an outlier when some |x| > threshold); O `outlier` (an (in_features,) mask),
returned as `outlier_cols`; s_x, s_w, C_x, C_w as named in `_vectorwise_int8`; S_f16 is s_x s_wᵀ.

>>> x = torch.tensor([[1.0, 8.0], [0.5, -2.0]])  # column 1 holds 8 > 6: an outlier column
>>> y, outlier_cols = int8_decomposed_matmul(x, torch.tensor([[1.0, 1.0]]))
>>> y.tolist(), outlier_cols.tolist()  # 8 and -2 in float, 1 and 0.5 exactly on their own INT8 grids
([[9.0], [-1.5]], [1])
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from .arch import decoder_linears
from .calib.capture import forwards_replaced
from .quant import check_tensor, round_to_grid

__all__ = ["OutlierLog", "int8_decomposed_matmul", "llm_int8", "output_error"]


def _check_threshold(threshold) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
        raise ValueError(
            f"threshold must be a number >= 0 (6.0 in the paper; math.inf: no outliers), got {threshold!r}"
        )


_EXACT_RUN = 1024  # 1024 · 127² < 2^24: a float32 sum of that many products of INT8 codes is an exact integer


def _code_product(C_x: torch.Tensor, C_w: torch.Tensor) -> torch.Tensor:
    """C_x C_wᵀ exactly, as an INT8 tensor core computes it (int32 accumulation), in float64.

    Every partial sum over a run of 1024 columns is an integer below 2^24 in magnitude, so float32 (the fast
    BLAS path; not TF32) holds it exactly; the runs are added in float64. Tested against an int64 product."""
    runs = range(0, C_x.shape[1], _EXACT_RUN)
    return sum((C_x[:, a : a + _EXACT_RUN] @ C_w[:, a : a + _EXACT_RUN].T).double() for a in runs)


def _vectorwise_int8(X: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """(s_x s_wᵀ) ⊙ (C_x C_wᵀ): X (tokens, k) and W (out_features, k) with one INT8 scale per row."""
    s_x = X.abs().amax(1, keepdim=True) / 127  # (tokens, 1)
    s_w = W.abs().amax(1, keepdim=True) / 127  # (out_features, 1)
    C_x = round_to_grid(X, torch.where(s_x > 0, s_x, 1.0), 0, -127, 127)
    C_w = round_to_grid(W, torch.where(s_w > 0, s_w, 1.0), 0, -127, 127)
    return (_code_product(C_x, C_w) * (s_x.double() @ s_w.double().T)).float()


def int8_decomposed_matmul(
    x: torch.Tensor, W: torch.Tensor, threshold: float = 6.0, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """LLM.int8()'s product (module docstring): (y (..., out_features) in x's dtype, outlier_cols (k,) int64).

    x: (..., in_features), W: (out_features, in_features). Columns j with any |x[..., j]| > threshold are
    multiplied in float32; the others in vector-wise INT8. threshold=0: all non-zero columns in float;
    math.inf: none (plain vector-wise INT8). bias (out_features,) is added in float32.
    """
    check_tensor(x)
    check_tensor(W)
    _check_threshold(threshold)
    X, W = x.reshape(-1, x.shape[-1]).float(), W.float()  # X: (tokens, in_features)
    outlier = (X.abs() > threshold).any(0)  # (in_features,) bool: O, the outlier columns
    Y = X[:, outlier] @ W[:, outlier].T
    if not outlier.all():
        Y = Y + _vectorwise_int8(X[:, ~outlier], W[:, ~outlier])
    if bias is not None:
        Y = Y + bias.float()
    return Y.reshape(*x.shape[:-1], W.shape[0]).to(x.dtype), outlier.nonzero().flatten()


def output_error(X: torch.Tensor, W: torch.Tensor, threshold: float = 6.0) -> tuple[float, int]:
    """LLM.int8() on one linear: (‖Y − XWᵀ‖² / ‖XWᵀ‖² with Y = int8_decomposed_matmul(X, W, threshold), the number of
    input columns it multiplied in float). X (tokens, in_features), W (out_features, in_features).
    threshold=math.inf: plain vector-wise INT8 (no column in float); 0: every non-zero column in float (error 0)."""
    Y, outlier_cols = int8_decomposed_matmul(X.float(), W, threshold)
    exact = X.float() @ W.float().T
    error = (Y - exact).pow(2).sum() / exact.pow(2).sum().clamp_min(torch.finfo(torch.float32).tiny)
    return float(error), len(outlier_cols)


@dataclass
class OutlierLog:
    """What llm_int8 saw: per decoder linear, the outlier columns of each forward call."""

    threshold: float
    in_features: dict[str, int]  # name -> the linear's in_features
    counts: dict[str, list[int]] = field(default_factory=dict)  # name -> outlier columns per call
    columns: dict[str, set[int]] = field(default_factory=dict)  # name -> every column ever an outlier

    def record(self, name: str, outlier_cols: torch.Tensor) -> None:
        self.counts.setdefault(name, []).append(len(outlier_cols))
        self.columns.setdefault(name, set()).update(outlier_cols.tolist())

    @property
    def fraction(self) -> dict[str, float]:
        """name -> mean fraction of the input columns multiplied in float, over the calls seen."""
        return {n: sum(c) / (len(c) * self.in_features[n]) for n, c in self.counts.items()}


@contextmanager
def llm_int8(model: nn.Module, threshold: float = 6.0):
    """Within the block every decoder linear computes int8_decomposed_matmul(x, weight, threshold, bias);
    yields an OutlierLog. The original forwards are put back on exit, even after an exception."""
    _check_threshold(threshold)
    linears = decoder_linears(model)
    log = OutlierLog(threshold, {name: linear.in_features for name, linear in linears.items()})

    def forward(name, linear):
        def decomposed(x):
            y, outlier_cols = int8_decomposed_matmul(x, linear.weight, threshold, linear.bias)
            log.record(name, outlier_cols)
            return y

        return decomposed

    with forwards_replaced({linear: forward(name, linear) for name, linear in linears.items()}):
        yield log
