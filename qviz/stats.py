"""Where the large numbers are: per-layer, per-channel statistics of a model's weights and activations.

Weight quantization cares about two kinds of outliers:

- weight outliers: a few large weights stretch the grid of every weight that shares their scale;
- activation outliers: a few *input channels* of a linear carry activations tens of times larger than the rest,
  so the weights in those columns of W (out_features, in_features) matter much more for the output y = W x.

`weight_stats` reads the weights; `activation_stats` runs calibration windows through the model once, with a
forward pre-hook on every linear of the decoder layers that accumulates per-input-channel mean |x| and max |x|.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from qviz.arch import decoder_layers, family_of, linear_layers
from qviz.quant import QuantSpec, fake_quantize, sqnr_db

__all__ = [
    "ChannelStats",
    "activation_stats",
    "layer_error",
    "weight_stats",
    "outlier_ratio",
    "named_linears",
]


def named_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every linear inside the decoder layers, keyed 'layers.{i}.{name}' (e.g. 'layers.3.mlp.down_proj')."""
    family = family_of(model)
    return {
        f"layers.{i}.{name}": linear
        for i, layer in enumerate(decoder_layers(model))
        for name, linear in linear_layers(layer, family).items()
    }


@dataclass
class ChannelStats:
    """Per-input-channel activation magnitudes of one linear, over `tokens` calibration tokens."""

    mean_abs: torch.Tensor  # (in_features,) mean |x_j| over tokens: AWQ's s_x
    max_abs: torch.Tensor  # (in_features,) max |x_j| over tokens
    tokens: int


def outlier_ratio(magnitudes: torch.Tensor) -> float:
    """max / median of per-channel magnitudes: 1 means no outlier channel; tens means a few dominate."""
    median = magnitudes.float().median().item()
    return magnitudes.max().item() / median if median > 0 else float("inf")


def weight_stats(model: nn.Module) -> list[dict]:
    """One row per linear: layer index, name, shape, std, max |w|, and outlier ratios of row and column maxima."""
    rows = []
    for key, linear in named_linears(model).items():
        w = linear.weight.detach().float()
        _, layer, name = key.split(".", 2)
        rows.append(
            dict(
                layer=int(layer),
                name=name,
                shape=tuple(w.shape),
                std=w.std().item(),
                max_abs=w.abs().max().item(),
                row_outlier_ratio=outlier_ratio(w.abs().amax(dim=1)),
                column_outlier_ratio=outlier_ratio(w.abs().amax(dim=0)),
            )
        )
    return rows


@torch.no_grad()
def activation_stats(model: nn.Module, windows: torch.Tensor, batch_size: int = 4) -> dict[str, ChannelStats]:
    """Run `windows` (n, seqlen) token ids through the model; per-input-channel |x| statistics of every linear.

    Keys are those of `named_linears`. Linears that read the same input (q, k, v) get identical statistics.
    """
    if windows.numel() == 0:
        raise ValueError("activation_stats needs at least one calibration window of tokens")
    linears = named_linears(model)
    sums = {k: torch.zeros(m.in_features, dtype=torch.float64) for k, m in linears.items()}
    maxes = {k: torch.zeros(m.in_features) for k, m in linears.items()}
    counts = dict.fromkeys(linears, 0)

    def hook(key):
        def record(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).abs().float()
            sums[key] += x.sum(0).double().cpu()
            maxes[key] = torch.maximum(maxes[key], x.amax(0).cpu())
            counts[key] += x.shape[0]

        return record

    handles = [m.register_forward_pre_hook(hook(k)) for k, m in linears.items()]
    device = next(model.parameters()).device
    body = model.get_decoder()  # the decoder stack without the lm_head (vocabulary-sized logits)
    try:
        for start in tqdm(range(0, len(windows), batch_size), desc="activation statistics", leave=False):
            body(windows[start : start + batch_size].to(device))  # no lm_head: logits are not needed
    finally:
        for h in handles:
            h.remove()
    return {k: ChannelStats((sums[k] / counts[k]).float(), maxes[k], counts[k]) for k in linears}


def layer_error(w: torch.Tensor, mean_abs: torch.Tensor, spec: QuantSpec) -> dict:
    """Weight SQNR, and an activation-weighted SQNR that counts each column's error by its input's size.

    The output of a linear is y = W x. With E = W − Ŵ, a column j contributes to the output error in proportion
    to |x_j|, so Σ_j m_j² ‖E[:, j]‖² / Σ_j m_j² ‖W[:, j]‖² (m_j = mean |x_j|) estimates how much of the *output*
    is noise; errors in high-activation columns weigh most.
    """
    e2 = (fake_quantize(w, spec) - w).pow(2).sum(0)  # (in_features,) squared error per column
    w2 = w.pow(2).sum(0)
    m2 = mean_abs.float().pow(2)
    noise, signal = (m2 * e2).sum().item(), (m2 * w2).sum().item()
    return dict(
        weight_sqnr_db=sqnr_db(w, fake_quantize(w, spec)),
        weighted_sqnr_db=10 * math.log10(signal / noise) if noise > 0 else float("inf"),
        column_error=e2.numpy(),
    )
