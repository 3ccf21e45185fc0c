"""Output errors from H alone, and the report row every method returns per linear.

With H = 2XXᵀ/n of a linear's calibration inputs (`qviz.calib.hessian`), the mean squared output error of a
quantized weight Q needs no activations:

    mean over tokens of ‖(W − Q)x‖²  =  ½·tr((W − Q) H (W − Q)ᵀ)                      (`output_error`)
    relative output error            =  ‖WX − QX‖² / ‖WX‖²  =  output_error(W, Q, H) / output_error(W, 0, H)
"""

from __future__ import annotations

import math

import torch

from ..quant import mse, sqnr_db

__all__ = ["linear_report", "output_error", "relative_output_error"]


def output_error(W: torch.Tensor, Q: torch.Tensor, H: torch.Tensor) -> float:
    """½·tr((W − Q) H (W − Q)ᵀ): with H = 2XXᵀ/n, the mean over the n tokens of ‖(W − Q)x‖².
    W, Q: (out_features, in_features); H: (in_features, in_features)."""
    D = (W.to(H.dtype) - Q.to(H.dtype)).to(H.device)
    return 0.5 * ((D @ H) * D).sum().item()


def relative_output_error(
    W: torch.Tensor, Q: torch.Tensor, H: torch.Tensor, err: float | None = None
) -> float:
    """‖WX − QX‖² / ‖WX‖² (bias excluded: it cancels in the difference); NaN when WX is 0 on every token.
    `err`: output_error(W, Q, H), when the caller already has it (GPTQ does, from its losses)."""
    signal = output_error(W, torch.zeros_like(W), H)
    err = output_error(W, Q, H) if err is None else err
    return err / signal if signal > 0 else math.nan


def linear_report(
    name: str,
    W: torch.Tensor,
    Q: torch.Tensor,
    H: torch.Tensor | None = None,
    Q_rtn: torch.Tensor | None = None,
    err: float | None = None,
) -> dict:
    """One report row for a linear whose weight W (out, in) becomes Q.

    weight_mse, sqnr_db: error of the weights themselves. With H = 2XXᵀ/n of the calibration inputs also
    output_mse = mean over tokens and outputs of ((W − Q)x)², and output_rel_error = ‖WX − QX‖² / ‖WX‖²;
    with Q_rtn (plain rounding) also rtn_output_rel_error. `err`: output_error(W, Q, H) when known.
    """
    row = {"linear": name, "shape": tuple(W.shape), "weight_mse": mse(W, Q), "sqnr_db": sqnr_db(W, Q)}
    if H is not None:
        err = output_error(W, Q, H) if err is None else err
        row["output_mse"] = err / W.shape[0]
        row["output_rel_error"] = relative_output_error(W, Q, H, err)
        if Q_rtn is not None:
            row["rtn_output_rel_error"] = relative_output_error(W, Q_rtn, H)
    return row
