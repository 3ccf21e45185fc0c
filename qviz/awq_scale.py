"""AWQ on one weight: activation statistics, the scale s(α), the α search, and the FP16-salient experiment.

AWQ's observation (Lin et al. 2023, §3.1): keeping just 1% of a linear's input channels in FP16 - the ones
with the largest *activations*, not the largest weights - recovers most of the quantization loss. Mixed
formats are awkward for hardware, so AWQ scales those channels up before rounding instead (§3.2):

    y = W x = (W·diag(s)) (diag(s)⁻¹ x)       quantized:  Q(W·diag(s)) (diag(s)⁻¹ x)

Rounding error per weight is about the same before and after scaling, but a channel multiplied by s > 1 has
that error divided by s when the output is formed, so the channels with large activations lose less.
s comes from the mean activation magnitude per input channel and one exponent α:

    s_x = mean_t |X[t, :]|,   s(α) = s_x^α / sqrt(max(s_x^α)·min(s_x^α)),   α ∈ {0, 0.05, ..., 0.95}
    α* = argmin_α ‖X·Q(W·s)ᵀ·... − X Wᵀ‖²    (here on a single linear; `qviz.awq` uses a whole block)

Symbols -> variables: X (tokens, in_features) the linear's calibration input; W (out_features, in_features);
s_x `mean_abs(X)`; s `awq_scale(s_x, α)`; Q(W·s)/s `awq_fake_quantize(W, s, spec)`. α = 0 gives s = 1: RTN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .awq_clip import apply_clip, clip_search, group_absmax
from .quant import QuantSpec, check_tensor, fake_quantize

__all__ = [
    "LinearAWQ",
    "SalientResult",
    "alpha_curve",
    "alpha_grid",
    "awq_fake_quantize",
    "awq_linear",
    "awq_scale",
    "group_output_error",
    "keep_salient_fp16",
    "mean_abs",
    "output_mse",
]


def alpha_grid(n_grid: int = 20) -> tuple[float, ...]:
    """The α values searched: 0, 1/n_grid, ..., (n_grid − 1)/n_grid (the paper's 0, 0.05, ..., 0.95 for 20).

    >>> alpha_grid(4)
    (0.0, 0.25, 0.5, 0.75)
    """
    if isinstance(n_grid, bool) or not isinstance(n_grid, int) or n_grid < 1:
        raise ValueError(f"n_grid must be a positive integer (20 in the paper), got {n_grid!r}")
    return tuple(i / n_grid for i in range(n_grid))


ALPHA_GRID = alpha_grid()  # the paper's grid: 0, 0.05, ..., 0.95


def mean_abs(X: torch.Tensor) -> torch.Tensor:
    """s_x: mean |X| per input channel over all tokens. X: (..., in_features) -> (in_features,) float32."""
    if not isinstance(X, torch.Tensor) or X.numel() == 0:
        raise ValueError("X has no tokens: AWQ needs calibration inputs (tokens, in_features)")
    return X.reshape(-1, X.shape[-1]).abs().float().mean(0)


def awq_scale(s_x: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = s_x^α / sqrt(max·min) (after a floor of 1e-4, so dead channels stay finite).

    >>> awq_scale(torch.tensor([1.0, 4.0, 16.0]), 0.5).tolist()  # s_x^0.5 = [1, 2, 4], sqrt(4·1) = 2
    [0.5, 1.0, 2.0]
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    s = s_x.float().pow(alpha).clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


def awq_fake_quantize(W: torch.Tensor, s: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Q(W·diag(s))·diag(s)⁻¹: the weight the scaled model computes with, in the original coordinates.

    W: (out_features, in_features), s: (in_features,). With s = 1 this is plain RTN.
    """
    s = s.to(device=W.device, dtype=torch.float32)
    return (fake_quantize(W.float() * s, spec) / s).to(W.dtype)  # fake_quantize validates W·s and spec


def output_mse(X: torch.Tensor, W: torch.Tensor, W_hat: torch.Tensor) -> float:
    """mean over tokens and outputs of (X Wᵀ − X Ŵᵀ)²: the error the next layer sees. X: (tokens, in)."""
    X = X.reshape(-1, X.shape[-1]).float()
    return (X @ (W.float() - W_hat.float()).T).pow(2).mean().item()


def _check(W: torch.Tensor, X: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    check_tensor(W, spec)
    if W.dim() != 2:
        raise ValueError(f"W must be (out_features, in_features), got shape {tuple(W.shape)}")
    if not isinstance(X, torch.Tensor) or X.numel() == 0 or X.shape[-1] != W.shape[1]:
        shape = tuple(X.shape) if isinstance(X, torch.Tensor) else type(X).__name__
        raise ValueError(f"X must be (tokens, {W.shape[1]}) with at least one token, got {shape}")
    return X.reshape(-1, X.shape[-1]).float()


@dataclass(frozen=True)
class LinearAWQ:
    """`awq_linear`'s result. W_hat is in the original coordinates: X Ŵᵀ approximates X Wᵀ directly."""

    W_hat: torch.Tensor  # (out_features, in_features) Q(clip(W·s))/s
    s: torch.Tensor  # (in_features,) the chosen scale
    alpha: float  # α*
    alphas: list[float]  # the grid
    losses: list[float]  # output MSE for each α, before clipping; losses[0] is RTN
    rtn_error: float  # output MSE of plain rounding
    error: float  # output MSE of W_hat (after clipping, when clip=True)
    clip_ratio: torch.Tensor | None  # (out_features, n_groups) chosen clip ratios; None without clipping


@torch.no_grad()
def awq_linear(
    W: torch.Tensor,
    X: torch.Tensor,
    spec: QuantSpec,
    *,
    alphas: tuple[float, ...] = ALPHA_GRID,
    clip: bool = True,
) -> LinearAWQ:
    """AWQ on a single linear: the α grid search with the linear itself as the inspected output, then the
    clipping search (`qviz.awq_clip`). W: (out_features, in_features); X: (tokens, in_features)."""
    X = _check(W, X, spec)
    s_x = mean_abs(X)
    losses = [output_mse(X, W, awq_fake_quantize(W, awq_scale(s_x, a), spec)) for a in alphas]
    best = min(range(len(alphas)), key=losses.__getitem__)
    s = awq_scale(s_x, alphas[best])
    Ws = W.float() * s
    ratio = None
    if clip:
        Xs = X / s
        result = clip_search(Ws, 2 * Xs.T @ Xs / Xs.shape[0], spec)  # H = 2XᵀX/n of the scaled input
        Ws, ratio = apply_clip(Ws, result.max_val), result.ratio
    W_hat = (fake_quantize(Ws, spec) / s).to(W.dtype)
    rtn = output_mse(X, W, fake_quantize(W, spec))
    return LinearAWQ(W_hat, s, alphas[best], list(alphas), losses, rtn, output_mse(X, W, W_hat), ratio)


@torch.no_grad()
def group_output_error(
    W: torch.Tensor, X: torch.Tensor, spec: QuantSpec, alpha: float, clip_ratio: float = 1.0
) -> float:
    """L(α, r): output MSE of Q(clip_r(W·s))/s against W on X, for one linear. W: (out, in); X: (tokens, in).

    s = awq_scale(mean_abs(X), α); clip_ratio r in (0, 1]: every (row, group) of W·s is clamped to ±r·(its max
    |w|) before rounding (AWQ's search picks r per group; one r for all shows the trade-off). α = 0, r = 1 is
    plain RTN: output_mse(X, W, fake_quantize(W, spec)).
    """
    if not 0 < clip_ratio <= 1:
        raise ValueError(f"clip_ratio must be in (0, 1], got {clip_ratio}")
    X = _check(W, X, spec)
    s = awq_scale(mean_abs(X), alpha)  # (in,)
    Ws = W.float() * s
    if clip_ratio < 1:
        Ws = apply_clip(Ws, group_absmax(Ws, spec) * clip_ratio)
    return output_mse(X, W, fake_quantize(Ws, spec) / s)


def alpha_curve(
    W: torch.Tensor, X: torch.Tensor, spec: QuantSpec, clip_ratio: float = 1.0, alphas=ALPHA_GRID
) -> list[float]:
    """L(α, r) for every α of `alphas` at one clip ratio r (see `group_output_error`)."""
    return [group_output_error(W, X, spec, a, clip_ratio) for a in alphas]


@dataclass(frozen=True)
class SalientResult:
    """`keep_salient_fp16`'s result."""

    W_hat: torch.Tensor  # (out_features, in_features): quantized, except the kept columns (original values)
    channels: torch.Tensor  # (k,) indices of the input channels kept in full precision
    error: float  # output MSE with those channels kept
    rtn_error: float  # output MSE with every channel quantized


def keep_salient_fp16(
    W: torch.Tensor,
    X: torch.Tensor,
    spec: QuantSpec,
    fraction: float = 0.01,
    *,
    by: str = "activation",
    seed: int = 0,
) -> SalientResult:
    """Quantize W but keep a `fraction` of its input channels (columns) in full precision (AWQ §3.1).

    by: how the kept channels are chosen: "activation" (largest mean |X|, AWQ's choice), "weight" (largest
    mean |W| over the column), or "random" (seeded). At least one channel is kept.
    W: (out_features, in_features); X: (tokens, in_features). Errors are output MSEs (see `output_mse`).
    """
    X = _check(W, X, spec)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], e.g. 0.01 for 1%, got {fraction}")
    k = max(1, round(fraction * W.shape[1]))
    if by == "activation":
        channels = mean_abs(X).topk(k).indices
    elif by == "weight":
        channels = W.abs().float().mean(0).topk(k).indices
    elif by == "random":
        channels = torch.randperm(W.shape[1], generator=torch.Generator().manual_seed(seed))[:k]
    else:
        raise ValueError(f"by must be 'activation', 'weight' or 'random', got {by!r}")
    Q = fake_quantize(W, spec)
    W_hat = Q.clone()
    W_hat[:, channels] = W[:, channels]
    channels = channels.sort().values
    return SalientResult(W_hat, channels, output_mse(X, W, W_hat), output_mse(X, W, Q))
