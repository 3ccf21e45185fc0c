"""AWQ: activation-aware weight quantization (Lin et al. 2023) on a whole model: scale groups, folding,
the block-level α search and the orchestration through the shared layer-by-layer driver.

For one linear (`qviz.awq_scale`): W x = (W·diag(s)) (diag(s)⁻¹ x), s(α) = s_x^α normalised, s_x = mean|X|.
In a decoder layer, one s is shared by every linear that reads the same input (a `ScaleGroup` of
`qviz.arch`: input_layernorm -> q,k,v; v_proj -> o_proj when shapes match; the MLP norm -> gate,up;
up_proj -> down_proj), and the loss is measured on the output of the group's `inspect` module f:

    L(α) = ‖f(X; Q(W·s)·s⁻¹ for every W of the group) − f(X; W)‖²      α* = argmin over α ∈ {0, ..., 0.95}

Symbols -> variables: X the captured input of the group's linears (tokens, in_features); W each linear's
weight (out_features, in_features); Q `qviz.quant.fake_quantize` under a QuantSpec; f the whole attention
block for q/k/v (rerun with its captured kwargs: rotary embeddings, attention mask), the MLP for gate/up, or
the single linear; L the mean squared error of f's output, on `AWQConfig.search_tokens` tokens.
α = 0 (s = 1) is plain RTN, so L(α*) <= L(0) on the search tokens.

diag(s)⁻¹ is then folded into the op that produces X (`fold_scales`), so the float model is unchanged; a
clipping search (`qviz.awq_clip`, skipped for q and k) and the final rounding follow. `awq_layer` does this
for one decoder layer, `quantize_model` for every layer through `qviz.calib.quantize_layerwise`, which feeds
each quantized layer's outputs to the next.

Cost: the search reruns f 20 times per group; it is the search token count, not the calibration size, that
sets the time (s_x and the clipping samples come from one pass over all calibration tokens).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .arch import ArchFamily, ScaleGroup, linear_layers, scale_groups
from .awq_clip import ClipResult, apply_clip, clip_search
from .awq_scale import (
    LinearAWQ,
    SalientResult,
    awq_fake_quantize,
    awq_linear,
    awq_scale,
    keep_salient_fp16,
    mean_abs,
    output_mse,
)
from .calib import LayerInputs, quantize_layerwise
from .quant import QuantSpec, fake_quantize

__all__ = [  # the whole AWQ API, including the single-weight pieces of awq_scale and awq_clip
    "AWQ",
    "AWQConfig",
    "AWQResult",
    "ClipResult",
    "GroupResult",
    "LinearAWQ",
    "LinearResult",
    "SalientResult",
    "apply_clip",
    "awq_fake_quantize",
    "awq_layer",
    "awq_linear",
    "awq_scale",
    "clip_search",
    "fold_scales",
    "keep_salient_fp16",
    "mean_abs",
    "output_mse",
    "quantize_model",
]


@dataclass(frozen=True)
class AWQConfig:
    """Options of the AWQ search; the defaults follow the paper and its reference code."""

    n_grid: int = 20  # α runs over {0, 1/n_grid, ..., (n_grid - 1)/n_grid}
    search_tokens: int | None = 4096  # calibration tokens the α search runs f on (whole calls); None: all
    clip: bool = True  # run the clipping search after scaling
    clip_grid: int = 20  # clip bounds max·(1 − i/clip_grid) ...
    max_shrink: float = 0.5  # ... for i < max_shrink·clip_grid: 1, 0.95, ..., 0.55
    clip_tokens: int = 512  # evenly spaced input tokens the clipping search measures on
    no_clip: tuple[str, ...] = ("q_proj", "k_proj")  # last name parts never clipped (errors meet in QKᵀ)

    def __post_init__(self):
        for name in ("n_grid", "clip_grid", "clip_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.search_tokens is not None and (
            isinstance(self.search_tokens, bool) or not isinstance(self.search_tokens, int)
        ):
            raise ValueError(f"search_tokens must be a positive integer or None, got {self.search_tokens!r}")
        if self.search_tokens is not None and self.search_tokens < 1:
            raise ValueError(f"search_tokens must be a positive integer or None, got {self.search_tokens}")
        if not 0 < self.max_shrink < 1:
            raise ValueError(f"max_shrink must be in (0, 1), got {self.max_shrink!r}")

    @property
    def alphas(self) -> list[float]:
        return [i / self.n_grid for i in range(self.n_grid)]


@dataclass(frozen=True)
class GroupResult:
    """One scale group of one layer, as plain data (lists and floats) for tables and figures."""

    layer: int  # decoder layer index
    prev_op: str  # the op 1/s was folded into
    linears: tuple[str, ...]  # the linears whose input columns were multiplied by s
    inspect: str  # the module whose output the loss compares
    alphas: list[float]  # the grid
    losses: list[float]  # L(α) for each α: output MSE of `inspect`; losses[0] (α = 0) is RTN
    alpha: float  # the chosen α*
    scales: list[float]  # s(α*) per input channel
    mean_abs: list[float]  # s_x per input channel
    search_tokens: int  # tokens the search ran on


@dataclass(frozen=True)
class LinearResult:
    """One linear of one layer after AWQ, errors measured on the sampled calibration tokens."""

    layer: int
    name: str  # dotted name inside the layer, e.g. "mlp.down_proj"
    rtn_error: float  # mean over tokens/outputs of (W x − Q(W) x)²: plain rounding
    awq_error: float  # same for AWQ (scaled, clipped, rounded): (W x − Q(W·s) s⁻¹x)²
    clip_ratio: float | None  # mean chosen clip ratio (1 = no clipping); None when not searched
    clip_error_before: float | None  # clipping search objective at ratio 1
    clip_error_after: float | None  # ... at the chosen ratios


def _get(root: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        root = getattr(root, part)
    return root


@torch.no_grad()
def fold_scales(layer: nn.Module, group: ScaleGroup, s: torch.Tensor, family: ArchFamily) -> None:
    """Multiply the input columns of the group's linears by s and fold 1/s into `prev_op`, in place.

    prev_op is a norm y = x̂·(offset + w) (+ b):  (offset + w) ← (offset + w)/s, b ← b/s, with
    offset = family.norm_offset (1 for Gemma's RMSNorm); or a Linear: its output rows (and bias) ← /s.
    The float layer computes the same function afterwards (up to rounding of float arithmetic).
    """
    prev = _get(layer, group.prev_op)
    s = s.to(device=prev.weight.device, dtype=torch.float32)
    if isinstance(prev, nn.Linear):
        prev.weight.copy_(prev.weight.float() / s[:, None])
    else:
        offset = family.norm_offset
        prev.weight.copy_((offset + prev.weight.float()) / s - offset)
    bias = getattr(prev, "bias", None)  # LayerNorm (OPT) or a Linear with bias: y/s needs b/s too
    if bias is not None:
        bias.copy_(bias.float() / s)
    for name in group.linears:
        linear = _get(layer, name)
        linear.weight.copy_(linear.weight.float() * s)


class _Capture:
    """Hooks on one decoder layer's forward: per-linear input statistics and token samples, and the
    inputs/outputs of each scale group's `inspect` module on the search calls."""

    def __init__(self, layer, linears, inspect_names, search_calls: set[int], sample_stride: int):
        self.sum_abs: dict[str, torch.Tensor] = {}
        self.count: dict[str, int] = {}
        self.sample: dict[str, list[torch.Tensor]] = {name: [] for name in linears}
        self.calls: dict[str, list] = {name: [] for name in inspect_names}  # [(args, kwargs, output)]
        self.call = 0
        self.search_calls, self.stride = search_calls, sample_stride
        self.handles = [m.register_forward_pre_hook(self._linear_hook(n)) for n, m in linears.items()]
        for name in inspect_names:
            module = _get(layer, name)
            self.handles.append(module.register_forward_hook(self._inspect_hook(name), with_kwargs=True))

    def _linear_hook(self, name):
        def hook(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            self.sum_abs[name] = self.sum_abs.get(name, 0) + x.abs().double().sum(0)
            self.count[name] = self.count.get(name, 0) + x.shape[0]
            self.sample[name].append(x[:: self.stride].float())

        return hook

    def _inspect_hook(self, name):
        def hook(module, args, kwargs, output):
            if self.call in self.search_calls:
                out = output[0] if isinstance(output, tuple) else output
                self.calls[name].append((args, kwargs, out.detach()))

        return hook

    def remove(self):
        for handle in self.handles:
            handle.remove()


def _calls(inputs, kwargs) -> list[tuple[torch.Tensor, dict]]:
    """(hidden_states, kwargs) per forward call; kwargs is one dict for all calls or one per call."""
    if isinstance(inputs, torch.Tensor):
        inputs = [inputs]
    inputs = list(inputs)
    if not inputs or any(x.numel() == 0 for x in inputs):
        raise ValueError("AWQ needs calibration inputs: got no tokens for this layer")
    kwargs = [kwargs or {}] * len(inputs) if kwargs is None or isinstance(kwargs, dict) else list(kwargs)
    if len(kwargs) != len(inputs):
        raise ValueError(f"got {len(inputs)} inputs but {len(kwargs)} kwargs dicts")
    return list(zip(inputs, kwargs))


def _search_calls(calls, search_tokens: int | None) -> list[int]:
    """Evenly spaced call indices holding at least `search_tokens` tokens (all calls for None)."""
    per_call = calls[0][0].shape[:-1].numel()
    n = len(calls) if search_tokens is None else min(len(calls), math.ceil(search_tokens / per_call))
    return sorted({round(i * (len(calls) - 1) / max(n - 1, 1)) for i in range(n)})


def _output_mse(module: nn.Module, calls) -> float:
    total, count = 0.0, 0
    for args, kwargs, target in calls:
        out = module(*args, **kwargs)
        out = out[0] if isinstance(out, tuple) else out
        total += (out.float() - target.float()).pow(2).sum().item()
        count += target.numel()
    return total / count


@torch.no_grad()
def _grid_search(layer, group: ScaleGroup, s_x, spec, calls, alphas) -> list[float]:
    """L(α) for every α: the group's linears set to Q(W·s)/s, the inspect module rerun on `calls`."""
    linears = {name: _get(layer, name) for name in group.linears}
    W0 = {name: lin.weight.detach().clone() for name, lin in linears.items()}
    inspect = _get(layer, group.inspect)
    losses = []
    try:
        for alpha in alphas:
            s = awq_scale(s_x, alpha)
            for name, lin in linears.items():
                lin.weight.copy_(awq_fake_quantize(W0[name], s, spec))
            losses.append(_output_mse(inspect, calls))
    finally:
        for name, lin in linears.items():
            lin.weight.copy_(W0[name])
    return losses


def _linear_mse(X, W, X_ref, W_ref, out_scale=None) -> float:
    """mean (X Wᵀ·diag(out_scale) − X_ref W_refᵀ)²: out_scale undoes a 1/s folded into W's output rows."""
    Y = X @ W.float().T
    if out_scale is not None:
        Y = Y * out_scale
    return (Y - X_ref @ W_ref.float().T).pow(2).mean().item()


@torch.no_grad()
def awq_layer(
    layer: nn.Module,
    inputs: torch.Tensor | Sequence[torch.Tensor],
    kwargs: dict | Sequence[dict] | None,
    family: ArchFamily,
    spec: QuantSpec,
    config: AWQConfig = AWQConfig(),
    *,
    index: int = 0,
) -> tuple[list[GroupResult], list[LinearResult]]:
    """AWQ on one decoder layer, in place: search and fold the scales, clip, and round every linear.

    inputs: the layer's hidden_states, one tensor (batch, seq, hidden) per forward call; kwargs: the layer's
    forward kwargs (position embeddings, attention mask, ...), one dict for all calls or one per call.
    index: the layer's position, recorded in the results. The layer's linears end up holding the dequantized
    weights Q(W·s)·... in the scaled coordinates; the norms / previous linears hold the folded 1/s.
    """
    calls = _calls(inputs, kwargs)
    linears = linear_layers(layer, family)
    groups = scale_groups(layer, family)
    search = _search_calls(calls, config.search_tokens)
    total = sum(x.shape[:-1].numel() for x, _ in calls)
    capture = _Capture(
        layer, linears, {g.inspect for g in groups}, set(search), max(1, total // config.clip_tokens)
    )
    try:
        for i, (x, kw) in enumerate(calls):
            capture.call = i
            layer(x, **kw)
    finally:
        capture.remove()
    X0 = {name: torch.cat(xs)[: config.clip_tokens] for name, xs in capture.sample.items()}
    W0 = {name: lin.weight.detach().clone() for name, lin in linears.items()}
    X = dict(X0)
    out_scale = {}  # linear -> s folded into its output rows (it is the prev_op of a later group)

    group_results = []
    for group in groups:
        first = group.linears[0]
        s_x = (capture.sum_abs[first] / capture.count[first]).float()
        calls_g = capture.calls[group.inspect]
        losses = _grid_search(layer, group, s_x, spec, calls_g, config.alphas)
        best = min(range(len(losses)), key=losses.__getitem__)
        s = awq_scale(s_x, config.alphas[best])
        fold_scales(layer, group, s, family)
        for name in group.linears:
            X[name] = X[name] / s.to(X[name].device)
        if group.prev_op in linears:
            out_scale[group.prev_op] = s.to(X0[group.prev_op].device)
        n_search = sum(call[2].shape[:-1].numel() for call in calls_g)
        group_results.append(
            GroupResult(index, group.prev_op, group.linears, group.inspect, config.alphas, losses,
                        config.alphas[best], s.tolist(), s_x.tolist(), n_search)
        )  # fmt: skip

    linear_results = []
    for name, lin in linears.items():
        W = lin.weight.detach()
        clip = None
        if config.clip and name.rsplit(".", 1)[-1] not in config.no_clip and spec.granularity != "tensor":
            clip = clip_search(W, X[name], spec, n_grid=config.clip_grid, max_shrink=config.max_shrink)
            W = apply_clip(W, clip.max_val)
        Q = fake_quantize(W, spec)
        lin.weight.copy_(Q)
        linear_results.append(
            LinearResult(
                index,
                name,
                rtn_error=_linear_mse(X0[name], fake_quantize(W0[name], spec), X0[name], W0[name]),
                awq_error=_linear_mse(X[name], Q, X0[name], W0[name], out_scale.get(name)),
                clip_ratio=None if clip is None else clip.ratio.mean().item(),
                clip_error_before=None if clip is None else clip.error_before,
                clip_error_after=None if clip is None else clip.error_after,
            )
        )
    return group_results, linear_results


class AWQ:
    """AWQ as a `qviz.calib.LayerMethod`: the driver calls `quantize_layer` once per decoder layer, in order;
    the per-group search results accumulate in `groups` (state, hence a class)."""

    def __init__(self, spec: QuantSpec, config: AWQConfig = AWQConfig()):
        self.spec, self.config = spec, config
        self.groups: list[GroupResult] = []
        self.linears: list[LinearResult] = []

    def quantize_layer(self, layer: nn.Module, inputs: LayerInputs, family: ArchFamily) -> list[dict]:
        index = len({r.layer for r in self.linears})  # the driver visits layers in order
        groups, linears = awq_layer(
            layer, inputs.hidden, inputs.kwargs, family, self.spec, self.config, index=index
        )
        self.groups += groups
        self.linears += linears
        return [{"linear": r.name, **{k: v for k, v in asdict(r).items() if k not in ("layer", "name")}}
                for r in linears]  # fmt: skip


@dataclass(frozen=True)
class AWQResult:
    """What `quantize_model` returns: plain data for tables and `qviz.viz` figures."""

    spec: QuantSpec
    config: AWQConfig
    groups: list[GroupResult]  # one per (layer, scale group), in order
    linears: list[LinearResult]  # one per (layer, linear), in order


def quantize_model(
    model: nn.Module,
    spec: QuantSpec,
    windows: torch.Tensor,
    config: AWQConfig = AWQConfig(),
    *,
    batch_size: int = 1,
    progress: bool = True,
) -> AWQResult:
    """AWQ on every decoder layer of `model`, in place, through `qviz.calib.quantize_layerwise`.

    windows: (n, seq) calibration token ids, e.g. `qviz.data.calib_windows(tok, seqlen=512, n=64)`.
    batch_size: windows per forward call; the α search takes whole calls, so 1 lets `config.search_tokens`
    pick a few evenly spaced windows out of many. Asymmetric INT4 g128 is the paper's setting:

    >>> # quantize_model(model, QuantSpec(bits=4, symmetric=False, group_size=128), windows)
    """
    method = AWQ(spec, config)
    quantize_layerwise(model, method, windows, batch_size=batch_size, progress=progress)
    return AWQResult(spec, config, method.groups, method.linears)
