"""SmoothQuant (Xiao et al. 2023): move the quantization difficulty from the activations to the weights.

W8A8 quantizes a linear's input X as well as its weight W. LLM activations have a few outlier *channels*
(columns of X) up to 100x larger than the rest, and per-tensor (or per-token) activation grids are set by
those few: every other channel falls on a handful of levels. Weights have no such channels. Since

    Y = X·Wᵀ = (X·diag(s)⁻¹)·(W·diag(s))ᵀ        X: (tokens, in_features), W: (out_features, in_features)

dividing channel j of X by s_j and multiplying column j of W by s_j changes nothing in float, and SmoothQuant
picks s to balance the two ranges per channel, with one knob α (the migration strength):

    s_j = max|X_j|^α / max|W_j|^(1−α)

α = 0 leaves activations alone (s_j = 1/max|W_j| flattens the weights); α = 1 moves all difficulty to the
weights (every channel of X/s reaches max 1); α = 0.5 gives both the same per-channel maximum
√(max|X_j|·max|W_j|), the paper's default for most models.

Symbols -> variables: X the input of a scale group's linears (they all read it), max|X_j| `act_max` (measured
on calibration tokens, `qviz.act.channel_absmax`), max|W_j| `weight_max` (over every linear of the group,
`weight_channel_max`), s `smooth_scales`, α `alpha`.

Like AWQ's scales (`qviz.awq`), diag(s)⁻¹ is folded into the op that produces X, a norm or the previous linear
(`qviz.arch.scale_groups`, `qviz.awq.fold_scales`), so the smoothed model costs nothing at inference and
computes the same function in float. AWQ *searches* its exponent to protect salient weights for weight-only
quantization; SmoothQuant sets it by hand to make the activations quantizable.
"""

from __future__ import annotations

import numbers

import torch
from torch import nn

from .arch import decoder_layers, family_of, linear_layers, scale_groups
from .awq import fold_scales

__all__ = ["smooth_model", "smooth_scales", "weight_channel_max"]

FLOOR = 1e-5  # floor on max|X_j| and max|W_j| (the reference code's): dead channels keep a finite s


def smooth_scales(act_max: torch.Tensor, weight_max: torch.Tensor, alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^α / max|W_j|^(1−α) per input channel j, in float32.

    act_max, weight_max: (in_features,), both floored at FLOOR so that a channel that never fires (or a zero
    column) gives a finite, positive s. With α = 0.5, act_max [4, 1] and weight_max [1, 4] become [2, 2] and
    [2, 2] after smoothing (X_j/s_j and W_j·s_j):

    >>> smooth_scales(torch.tensor([4.0, 1.0]), torch.tensor([1.0, 4.0]), alpha=0.5).tolist()
    [2.0, 0.5]
    """
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha (the migration strength) must be a number in [0, 1], got {alpha!r}")
    if act_max.shape != weight_max.shape:
        raise ValueError(
            f"act_max and weight_max must have one value per input channel each, got shapes "
            f"{tuple(act_max.shape)} and {tuple(weight_max.shape)}"
        )
    X_max = act_max.float().clamp(min=FLOOR)
    W_max = weight_max.float().to(X_max.device).clamp(min=FLOOR)
    return X_max.pow(alpha) / W_max.pow(1 - alpha)


def weight_channel_max(linears) -> torch.Tensor:
    """max|W[:, j]| per input channel j over every linear of a scale group (they share their input X):
    (in_features,) float32, from weights W of shape (out_features, in_features)."""
    linears = list(linears)
    if not linears or len({lin.in_features for lin in linears}) != 1:
        raise ValueError(
            f"need at least one linear, all with the same in_features, got {[lin.in_features for lin in linears]}"
        )
    return torch.stack([lin.weight.detach().abs().amax(0).float() for lin in linears]).amax(0)


@torch.no_grad()
def smooth_model(model: nn.Module, act_max: dict[str, torch.Tensor], alpha: float = 0.5) -> dict:
    """Smooth every scale group of every decoder layer, in place: s from the group's activation and weight
    maxima (`smooth_scales`), folded by `qviz.awq.fold_scales` (prev_op ← prev_op/s, columns W ← W·s).

    act_max: full linear name -> max|X_j| of its input, (in_features,), as `qviz.act.channel_absmax` returns; a
    group reads the one of its first linear (its linears share the input). Groups are those of
    `qviz.arch.scale_groups`, as in AWQ: the norm before q/k/v and before the MLP, v -> o when the shapes match,
    up -> down (fc1 -> fc2 for OPT). The float model computes the same logits afterwards.

    Returns full linear name -> the s its input was divided by (the linears of a group share one tensor), so
    act_max[name] / s and weight_channel_max(...) are the maxima after smoothing, for plots of before/after.
    """
    family, scales = family_of(model), {}
    full_name = {module: name for name, module in model.named_modules()}
    todo = []  # (layer, its linears, group, full names of the group's linears), checked before any change
    for layer in decoder_layers(model):
        linears = linear_layers(layer, family)
        for group in scale_groups(layer, family):
            names = [full_name[linears[name]] for name in group.linears]  # "model.layers.0.self_attn.q_proj"
            if names[0] not in act_max:
                raise ValueError(
                    f"act_max has no entry for {names[0]}: measure it with qviz.act.channel_absmax(model, "
                    "windows), whose keys are the full names of the decoder linears"
                )
            todo.append((layer, linears, group, names))
    for layer, linears, group, names in todo:
        W_max = weight_channel_max(linears[name] for name in group.linears)
        s = smooth_scales(act_max[names[0]], W_max, alpha)
        fold_scales(layer, group, s, family)
        scales.update(dict.fromkeys(names, s))
    return scales
