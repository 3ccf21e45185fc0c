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

Cost: the search reruns f 20 times per group, so the search token count, not the calibration size, sets
the time. s_x comes from all calibration tokens (one cheap pass); the α search, the clipping objective
(H = 2XᵀX/n) and the per-linear reports use `AWQConfig.search_tokens` of them: a few evenly spaced whole
calls (windows). The reference code instead reruns every block on all calibration tokens. A few hundred
are enough: on SmolLM2 (INT4 asym g64, 16 x 256 calibration tokens, bench/RESULTS_AWQ.md) 257 and 1028
search tokens gave the same perplexity (25.21) and 4112 (all) gave 24.74, against 26.78 for llm-compressor's
search on all 4112, at 0.19x, 0.35x and 0.96x its time; hence the default of 512.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .arch import ArchFamily, ScaleGroup, linear_layers, scale_groups
from .awq_clip import apply_clip, clip_search
from .awq_scale import alpha_grid, awq_fake_quantize, awq_scale
from .calib.capture import LayerInputs, run_layer
from .calib.driver import quantize_layerwise
from .calib.hessian import HessianSet
from .calib.report import linear_report
from .quant import QuantizedTensor, QuantSpec, dequantize, fake_quantize, quantize
from .result import QuantResult

__all__ = ["AWQ", "AWQConfig", "GroupResult", "awq_layer", "fold_scales", "quantize_model"]


@dataclass(frozen=True)
class AWQConfig:
    """Options of the AWQ search; the defaults follow the paper and its reference code."""

    n_grid: int = 20  # α runs over {0, 1/n_grid, ..., (n_grid - 1)/n_grid}
    search_tokens: int | None = 512  # tokens (whole calls) the α search, clipping and reports use; None: all
    clip: bool = True  # run the clipping search after scaling
    clip_grid: int = 20  # clip bounds max·(1 − i/clip_grid) ...
    max_shrink: float = 0.5  # ... for i < max_shrink·clip_grid: 1, 0.95, ..., 0.55
    no_clip: tuple[str, ...] = ("q_proj", "k_proj")  # last name parts never clipped (errors meet in QKᵀ)

    def __post_init__(self):
        for name in ("n_grid", "clip_grid", "search_tokens"):
            value = getattr(self, name)
            if name == "search_tokens" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.max_shrink, (int, float)) and 0 < self.max_shrink < 1):
            raise ValueError(f"max_shrink must be in (0, 1), got {self.max_shrink!r}")

    @property
    def alphas(self) -> list[float]:
        return list(alpha_grid(self.n_grid))


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


def _get(root: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        root = getattr(root, part)
    return root


@torch.no_grad()
def fold_scales(layer: nn.Module, group: ScaleGroup, s: torch.Tensor, family: ArchFamily) -> None:
    """Multiply the input columns of the group's linears by s and fold 1/s into `prev_op`, in place.

    prev_op is a norm y = x̂·(offset + w) (+ b):  (offset + w) ← (offset + w)/s, b ← b/s, with
    offset = family.norm_offset (1 for Gemma's RMSNorm); or a Linear: its output rows (and bias) ← /s.
    The float layer computes the same function afterwards, up to the rounding of the arithmetic, done in the
    weights' dtype (in float32 for 16-bit weights, rounded once to 16 bits at the end): a float64 model stays
    float64-accurate.
    """
    prev = _get(layer, group.prev_op)
    dtype = torch.promote_types(prev.weight.dtype, torch.float32)  # float32, or float64 for a float64 model
    s = s.to(device=prev.weight.device, dtype=dtype)
    if isinstance(prev, nn.Linear):
        prev.weight.copy_(prev.weight.to(dtype) / s[:, None])
    else:
        offset = family.norm_offset
        prev.weight.copy_((offset + prev.weight.to(dtype)) / s - offset)
    bias = getattr(prev, "bias", None)  # LayerNorm (OPT) or a Linear with bias: y/s needs b/s too
    if bias is not None:
        bias.copy_(bias.to(dtype) / s)
    for name in group.linears:
        linear = _get(layer, name)
        linear.weight.copy_(linear.weight.to(dtype) * s)


class _Capture:
    """Hooks on one decoder layer's forward over the calibration calls:

    - sum_abs/count: Σ|X| per input channel of the groups' linears, over ALL calls (cheap: s_x needs it);
    - hessians: H = 2XᵀX/n of every linear's input, on the search calls only (linears reading the same
      tensor, q/k/v and gate/up, share one `Hessian`);
    - calls: (args, kwargs, output) of each group's `inspect` module, on the search calls only.
    """

    def __init__(
        self, layer: nn.Module, linears: dict, stats: list[str], inspect: set[str], search: set[int]
    ):
        self.sum_abs: dict[str, torch.Tensor] = {}
        self.count: dict[str, int] = {}
        self.hessians = HessianSet()
        self.calls: dict[str, list] = {name: [] for name in inspect}
        self.call, self.search = -1, search
        self.handles = [layer.register_forward_pre_hook(self._next_call)]
        self.handles += [
            m.register_forward_pre_hook(self._linear_hook(n, n in stats)) for n, m in linears.items()
        ]
        self.handles += [
            _get(layer, n).register_forward_hook(self._inspect_hook(n), with_kwargs=True) for n in inspect
        ]

    def _next_call(self, module, args):
        self.call += 1
        self.hessians.new_call()

    def _linear_hook(self, name, stats):
        def hook(module, args):
            if stats:
                X = args[0].detach().reshape(-1, args[0].shape[-1])
                self.sum_abs[name] = self.sum_abs.get(name, 0) + X.abs().double().sum(0)
                self.count[name] = self.count.get(name, 0) + X.shape[0]
            if self.call in self.search:
                self.hessians.add(name, args[0])  # the tensor itself: q/k/v (gate/up) share one H

        return hook

    def _inspect_hook(self, name):
        def hook(module, args, kwargs, output):
            if self.call in self.search:
                out = output[0] if isinstance(output, tuple) else output
                self.calls[name].append((args, kwargs, out.detach()))

        return hook

    def remove(self):
        for handle in self.handles:
            handle.remove()


def _search_calls(inputs: LayerInputs, search_tokens: int | None) -> set[int]:
    """Evenly spaced call indices holding at least `search_tokens` tokens (all calls for None)."""
    n_calls = len(inputs.hidden)
    per_call = inputs.hidden[0].shape[:-1].numel()
    n = n_calls if search_tokens is None else min(n_calls, math.ceil(search_tokens / per_call))
    return {round(i * (n_calls - 1) / max(n - 1, 1)) for i in range(n)}


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


@torch.no_grad()
def awq_layer(
    layer: nn.Module,
    inputs: LayerInputs,
    family: ArchFamily,
    spec: QuantSpec,
    config: AWQConfig = AWQConfig(),
    *,
    index: int = 0,
) -> tuple[list[GroupResult], list[dict], dict[str, QuantizedTensor]]:
    """AWQ on one decoder layer, in place: search and fold the scales, clip, and round every linear.

    inputs: the layer's calibration inputs (`qviz.calib.capture.LayerInputs`: hidden_states and kwargs per
    call). Returns (one GroupResult per scale group, one report row per linear, the QuantizedTensor of each
    linear: the codes of Q(clip(W·s)), whose 1/s lives in the folded norm or previous linear). A row is
    `qviz.calib.report.linear_report` of the linear's effective weight diag(s_out)·Q(W·s)·diag(s)⁻¹ against the
    original W (so it compares with RTN's and GPTQ's rows; errors on the search tokens' inputs), plus
    "rtn_output_rel_error" (plain rounding) and "clip_ratio" (mean chosen ratio; None when not searched).
    Afterwards the linears hold Q(W·s) and the norms / previous linears the folded 1/s.
    index: the layer's position, recorded in the results.
    """
    if not inputs.hidden or inputs.n_tokens == 0:
        raise ValueError("AWQ needs calibration inputs: got no tokens for this layer")
    linears = linear_layers(layer, family)
    groups = scale_groups(layer, family)
    search = _search_calls(inputs, config.search_tokens)
    capture = _Capture(layer, linears, [g.linears[0] for g in groups], {g.inspect for g in groups}, search)
    try:
        run_layer(layer, inputs)  # float pass: statistics, H and the search targets
    finally:
        capture.remove()
    hessians = capture.hessians.hessians
    W0 = {name: lin.weight.detach().clone() for name, lin in linears.items()}
    s_in, s_out = {}, {}  # linear -> s multiplied into its input columns / folded (1/s) into its output rows

    group_results = []
    for group in groups:
        first = group.linears[0]
        s_x = (capture.sum_abs[first] / capture.count[first]).float()
        calls = capture.calls[group.inspect]
        losses = _grid_search(layer, group, s_x, spec, calls, config.alphas)
        best = min(range(len(losses)), key=losses.__getitem__)
        s = awq_scale(s_x, config.alphas[best])
        fold_scales(layer, group, s, family)
        s_in.update(dict.fromkeys(group.linears, s))
        if group.prev_op in linears:
            s_out[group.prev_op] = s
        n_search = sum(call[2].shape[:-1].numel() for call in calls)
        group_results.append(
            GroupResult(index, group.prev_op, group.linears, group.inspect, config.alphas, losses,
                        config.alphas[best], s.tolist(), s_x.tolist(), n_search)
        )  # fmt: skip

    rows, quantized = [], {}
    for name, lin in linears.items():
        H = hessians[name].H
        W = lin.weight.detach()
        clip = None
        if config.clip and name.rsplit(".", 1)[-1] not in config.no_clip and spec.granularity != "tensor":
            Hs = H if name not in s_in else H / torch.outer(s_in[name], s_in[name]).to(H)  # input X/s
            clip = clip_search(W, Hs, spec, n_grid=config.clip_grid, max_shrink=config.max_shrink)
            W = apply_clip(W, clip.max_val)
        quantized[name] = quantize(W, spec)
        Q = dequantize(quantized[name])
        lin.weight.copy_(Q)
        Q_eff = Q.float()  # the same weight in the original coordinates: diag(s_out)·Q·diag(s_in)⁻¹
        if name in s_in:
            Q_eff = Q_eff / s_in[name]
        if name in s_out:
            Q_eff = Q_eff * s_out[name][:, None]
        row = linear_report(name, W0[name], Q_eff, H, Q_rtn=fake_quantize(W0[name], spec))
        row["clip_ratio"] = None if clip is None else clip.ratio.mean().item()
        rows.append(row)
    return group_results, rows, quantized


class AWQ:
    """AWQ as a `qviz.calib.driver.LayerMethod`: the driver calls `quantize_layer` once per decoder layer, in
    order; the per-group search results accumulate in `groups` (state, hence a class)."""

    name = "awq"

    def __init__(self, spec: QuantSpec, config: AWQConfig = AWQConfig()):
        if not isinstance(config, AWQConfig):
            raise ValueError(f"config must be a qviz.awq.AWQConfig, got {type(config).__name__}")
        self.spec, self.config = spec, config
        self.groups: list[GroupResult] = []
        self.layers_done = 0

    @property
    def options(self) -> dict:
        return {**asdict(self.config), "no_clip": list(self.config.no_clip)}  # plain JSON: lists, not tuples

    def quantize_layer(self, layer: nn.Module, inputs: LayerInputs | None, family: ArchFamily):
        if inputs is None:
            raise ValueError(
                "AWQ needs calibration windows (n, seq) of token ids, e.g. qviz.data.calib_windows"
            )
        groups, rows, quantized = awq_layer(
            layer, inputs, family, self.spec, self.config, index=self.layers_done
        )
        self.groups += groups
        self.layers_done += 1
        return rows, quantized


def quantize_model(
    model: nn.Module,
    spec: QuantSpec,
    windows,
    config: AWQConfig = AWQConfig(),
    *,
    n_layers: int | None = None,
    batch_size: int = 1,
    bos_token_id: int | str | None = "auto",
    progress: bool = True,
) -> QuantResult:
    """AWQ on every linear inside the decoder layers of `model` (the first `n_layers`), in place, through
    `qviz.calib.driver.quantize_layerwise` (embeddings and lm_head stay in float).

    windows: (n, seq) calibration token ids, e.g. `qviz.data.calib_windows(tok, seqlen=512, n=64)`, each
    prefixed with BOS by default (`bos_token_id`). batch_size: windows per forward call; the α search takes
    whole calls, so 1 lets `config.search_tokens` pick a few evenly spaced windows out of many.
    Returns a `QuantResult`: the codes of every linear, the norms and biases 1/s was folded into
    (`float_tensors`), the rows described in `awq_layer`, and one `GroupResult` (as a dict) per (layer, scale
    group) in `scale_groups`. Asymmetric INT4 g128 is the paper's setting:

    >>> # quantize_model(model, QuantSpec(bits=4, symmetric=False, group_size=128), windows)
    """
    if windows is None:
        raise ValueError("AWQ needs calibration windows (n, seq) of token ids, e.g. qviz.data.calib_windows")
    method = AWQ(spec, config)
    result = quantize_layerwise(
        model, method, windows, n_layers=n_layers, batch_size=batch_size, bos_token_id=bos_token_id,
        progress=progress,
    )  # fmt: skip
    result.scale_groups = [{**asdict(group), "linears": list(group.linears)} for group in method.groups]
    return result
