"""Figures for AWQ: which input channels are salient, the α search per scale group, clipping, and AWQ's
per-layer output error against RTN (and GPTQ).

Each figure has a pure `*_data` function (tensors or result rows in, plain arrays out, testable without
Jupyter) and a builder that draws it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import plotly.graph_objects as go
import torch

from qviz.awq_clip import apply_clip, clip_search, group_length
from qviz.quant import QuantSpec, fake_quantize

__all__ = [
    "awq_channels_data",
    "awq_channels_figure",
    "alpha_loss_data",
    "alpha_loss_figure",
    "clip_curve_data",
    "clip_curve_figure",
    "awq_layer_loss_data",
    "awq_layer_loss_figure",
]

_SALIENT, _OTHER, _RTN, _AWQ, _GPTQ = "#d62728", "#1f77b4", "#7f7f7f", "#2ca02c", "#9467bd"


def awq_channels_data(mean_abs: torch.Tensor, W: torch.Tensor, salient: float = 0.01) -> dict:
    """Per input channel j: mean |x_j| over tokens, mean |W[:, j]| over output rows, and the top `salient`
    fraction by activation (at least one channel). mean_abs: (in_features,); W: (out_features, in_features)."""
    if mean_abs.dim() != 1 or W.dim() != 2 or W.shape[1] != len(mean_abs):
        raise ValueError(
            f"need mean_abs (in,) and W (out, in); got {tuple(mean_abs.shape)}, {tuple(W.shape)}"
        )
    if not 0 < salient <= 1:
        raise ValueError(f"salient must be in (0, 1], e.g. 0.01 for 1%, got {salient}")
    k = max(1, round(salient * len(mean_abs)))
    mask = np.zeros(len(mean_abs), dtype=bool)
    mask[mean_abs.topk(k).indices.cpu().numpy()] = True
    weight = W.detach().float().abs().mean(0).cpu().numpy()
    w_top = set(np.argsort(weight)[-k:].tolist())
    return dict(
        act=mean_abs.detach().float().cpu().numpy(),
        weight=weight,
        salient=mask,
        overlap=len(w_top & set(np.flatnonzero(mask).tolist())),  # salient by activation AND by weight
        k=k,
    )


def awq_channels_figure(data: dict, *, name: str = "linear") -> go.Figure:
    """Scatter of activation magnitude versus weight magnitude, one dot per input channel (log-log)."""
    fig = go.Figure()
    for mask, label, color in ((~data["salient"], "other channels", _OTHER),
                               (data["salient"], f"salient {data['k']} (top by activation)", _SALIENT)):  # fmt: skip
        idx = np.flatnonzero(mask)
        fig.add_scatter(
            x=data["act"][idx], y=data["weight"][idx], mode="markers", name=label, customdata=idx,
            marker=dict(color=color, size=5 if color == _OTHER else 9, opacity=0.6 if color == _OTHER else 1),
            hovertemplate="channel %{customdata}: mean|x| %{x:.3g}, mean|W| %{y:.3g}<extra></extra>",
        )  # fmt: skip
    fig.update_layout(
        title=f"{name}: salient channels have large activations, not large weights "
        f"({data['overlap']} of {data['k']} also in the top by weight)",
        xaxis_title="mean |x_j| over calibration tokens (activation units, log)",
        yaxis_title="mean |W[:, j]| (weight units, log)",
        xaxis_type="log", yaxis_type="log", template="plotly_white",
    )  # fmt: skip
    return fig


def _as_dict(group) -> dict:
    return dataclasses.asdict(group) if dataclasses.is_dataclass(group) else dict(group)


def alpha_loss_data(groups, layer: int | None = None) -> dict:
    """L(α) / L(0) per scale group (1 = plain rounding), from `AWQResult.groups` (GroupResult or dicts);
    `layer` keeps only that decoder layer's groups."""
    groups = [_as_dict(g) for g in groups if layer is None or _as_dict(g)["layer"] == layer]
    if not groups:
        raise ValueError("no scale groups to draw: pass AWQResult.groups (and a layer that exists)")
    curves = []
    for g in groups:
        rel = np.array(g["losses"]) / (g["losses"][0] or 1.0)
        best = g["alphas"].index(g["alpha"])
        curves.append(dict(label=f"layer {g['layer']}: {g['prev_op']} → {', '.join(g['linears'])}",
                           alphas=np.array(g["alphas"]), loss=rel, alpha=g["alpha"], best=rel[best]))  # fmt: skip
    return dict(curves=curves)


def alpha_loss_figure(data: dict) -> go.Figure:
    """One line per scale group: output loss versus α, relative to α = 0 (RTN); the chosen α* marked."""
    fig = go.Figure()
    for i, c in enumerate(data["curves"]):
        color = f"hsl({(i * 67) % 360}, 65%, 45%)"
        fig.add_scatter(x=c["alphas"], y=c["loss"], mode="lines", name=c["label"], line=dict(color=color))
        fig.add_scatter(
            x=[c["alpha"]], y=[c["best"]], mode="markers", showlegend=False,
            marker=dict(color=color, size=11, symbol="star"),
            hovertemplate=f"α* = {c['alpha']:.2f}: loss ×{c['best']:.3f} of RTN<extra></extra>",
        )  # fmt: skip
    fig.add_hline(y=1.0, line=dict(color=_RTN, dash="dot"), annotation_text="RTN (α = 0)")
    fig.update_layout(
        title="AWQ scale search: output loss of each scale group versus α (star: chosen α*)",
        xaxis_title="α (s = s_x^α, dimensionless)",
        yaxis_title="block output MSE / RTN's (ratio)",
        template="plotly_white",
    )
    return fig


def clip_curve_data(W: torch.Tensor, H: torch.Tensor, spec: QuantSpec, ratios=None) -> dict:
    """The clipping trade-off on one weight: mean output error per (row, group) when every group is clipped
    by the same ratio r, and the error when each group picks its own ratio (AWQ's search).

    W: (out_features, in_features); H = 2XᵀX/n (in, in), e.g. `qviz.calib.Hessian` of its input."""
    ratios = np.linspace(1.0, 0.5, 26) if ratios is None else np.asarray(ratios, dtype=float)
    glen = group_length(spec, W.shape[1])
    W = W.detach().float()
    w_max = W.reshape(W.shape[0], -1, glen).abs().amax(-1)
    H = H.float().to(W.device)
    errors = []
    for r in ratios:
        D = fake_quantize(apply_clip(W, w_max * float(r)), spec) - W
        errors.append(0.5 * ((D @ H) * D).sum().item() / W.shape[0])
    searched = clip_search(W, H, spec)
    D = fake_quantize(apply_clip(W, searched.max_val), spec) - W
    return dict(
        ratios=ratios,
        errors=np.array(errors),
        searched_error=0.5 * ((D @ H) * D).sum().item() / W.shape[0],
        searched_ratios=searched.ratio.flatten().cpu().numpy(),
    )


def clip_curve_figure(data: dict, *, name: str = "linear") -> go.Figure:
    """Output error versus a uniform clip ratio, with the per-group search as a horizontal line."""
    fig = go.Figure()
    fig.add_scatter(x=data["ratios"], y=data["errors"], mode="lines+markers", name="same ratio r everywhere")
    fig.add_hline(
        y=data["searched_error"], line=dict(color=_AWQ, dash="dash"),
        annotation_text=f"per-group search (mean r = {data['searched_ratios'].mean():.3f})",
    )  # fmt: skip
    fig.update_layout(
        title=f"{name}: clipping the largest weights trades a few big errors for a finer grid",
        xaxis_title="clip ratio r (range shrunk to r·max|W|, dimensionless)",
        yaxis_title="output MSE, mean ((W − Q)x)² (squared units)",
        xaxis_autorange="reversed", template="plotly_white",
    )  # fmt: skip
    return fig


def _per_layer(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    layers = sorted({r["layer"] for r in rows})
    return np.array(layers), np.array([np.mean([r[key] for r in rows if r["layer"] == i]) for i in layers])


def awq_layer_loss_data(awq_rows: list[dict], gptq_rows: list[dict] | None = None) -> dict:
    """Per decoder layer, the mean over its linears of ‖WX − QX‖² / ‖WX‖² for AWQ ("output_rel_error" of
    `AWQResult.rows`), RTN on the same inputs ("rtn_output_rel_error") and, if given, GPTQ
    (`qviz.gptq.quantize_model` rows)."""
    if not awq_rows or "rtn_output_rel_error" not in awq_rows[0]:
        raise ValueError("pass AWQResult.rows from qviz.awq.quantize_model (with 'rtn_output_rel_error')")
    layers, awq = _per_layer(awq_rows, "output_rel_error")
    data = dict(layers=layers, awq=awq, rtn=_per_layer(awq_rows, "rtn_output_rel_error")[1])
    if gptq_rows:
        data["gptq"] = _per_layer(gptq_rows, "output_rel_error")[1]
    return data


def awq_layer_loss_figure(data: dict, *, label: str = "") -> go.Figure:
    """AWQ, RTN (and GPTQ) relative output error per decoder layer, log scale."""
    fig = go.Figure()
    for key, color in (("rtn", _RTN), ("gptq", _GPTQ), ("awq", _AWQ)):
        if key in data:
            fig.add_scatter(x=data["layers"], y=data[key], mode="lines+markers", name=key.upper(),
                            line=dict(color=color))  # fmt: skip
    fig.update_layout(
        title=f"Per-layer output error (mean of its linears): AWQ vs {'GPTQ and ' if 'gptq' in data else ''}RTN {label}".strip(),
        xaxis_title="decoder layer",
        yaxis_title="‖WX − QX‖² / ‖WX‖² (ratio, log)",
        yaxis_type="log", template="plotly_white",
    )  # fmt: skip
    return fig
