"""Quantizing activations: the input X of every linear, not only its weight W.

A linear computes Y = X Wᵀ. Weight-only schemes (W4A16: RTN, GPTQ, AWQ) store W in few bits and still
multiply in 16-bit floats. INT8 and FP8 tensor cores multiply two low-bit operands, so X must be quantized
too (W8A8, W4A8, FP8). That is harder than quantizing W, for two reasons.

1. Outlier channels. In LLMs a few input channels (hidden dimensions) carry values 10-100× larger than the
   rest, in most tokens (LLM.int8(), Dettmers et al. 2022, §3; SmoothQuant, Xiao et al. 2023, §3).
   Weights look Gaussian; activations do not. A per-tensor scale = absmax / qmax is set by the outlier: with
   absmax 60 at INT8 the step is 0.47, and the ordinary values (|x| < 1) fall on 0 or ±1 step.
2. X is not known in advance. W is fixed, so its scales are computed once. X changes with every token:
   * dynamic scales are computed from X at run time (per-token: one absmax per row of X, a cheap reduction);
   * static scales are fixed beforehand from calibration maxima (no reduction at run time), and a token
     beyond the calibrated range is clipped to ±qmax.

Granularity. Per-token (one scale per row of X) is as fine as an integer matmul allows: with per-token s_x
and per-output-row s_w the scales factor out of the sum over in_features,

    Y[t, o] = Σ_j (s_x[t] C_x[t, j]) (s_w[o] C_w[o, j]) = s_x[t] s_w[o] · Σ_j C_x[t, j] C_w[o, j]

so one integer product C_x C_wᵀ and an outer product of scales give Y. A scale per input *channel* j would
stay inside the sum: outlier channels cannot simply get their own scale. LLM.int8() splits them off instead
and multiplies them in float (`qviz.llm_int8`); SmoothQuant moves them into W (`qviz.smooth`).

The grids (symmetric, zero_point 0; the code -2^(b-1) is unused, so that x and -x round alike):

    INT b bits:  qmax = 2^(b-1) - 1 (127, 7),  scale = absmax / qmax,  C = clamp(round(x / scale), -qmax, qmax)
    FP8 E4M3:    qmax = 448 (largest finite),  scale = absmax / 448,   C = fp8(clamp(x / scale, -448, 448))
    x̂ = C · scale          (absmax 0 gives x̂ = 0: a row of zeros stays zeros)

Symbols -> variables: X `x` (..., in_features), one row per token; scale `s`; C `C`. The KV cache is
quantized on these grids too, per token (`qviz.kvcache`).

>>> x = torch.tensor([[254.0, 1.0, -1.4], [2.0, 0.6, 1.4]])
>>> fake_quantize_act(x, ActSpec("int8", "per-tensor")).tolist()  # scale 254/127 = 2: small values lost
[[254.0, 0.0, -2.0], [2.0, 0.0, 2.0]]
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .arch import decoder_linears
from .data import with_bos
from .formats import get_format, round_to
from .quant import check_tensor, round_to_grid

__all__ = [
    "ACT_FORMATS",
    "ActSpec",
    "calibrate_act_scales",
    "channel_absmax",
    "fake_quantize_act",
    "output_error",
    "quantize_activations",
]

ACT_FORMATS = {
    **{f"int{bits}": 2 ** (bits - 1) - 1 for bits in range(8, 1, -1)},  # int8 (127) ... int4 (7) ... int2 (1)
    "fp8_e4m3": get_format("fp8_e4m3").max,
}  # format -> qmax (448 for E4M3)
ACT_GRANULARITIES = ("per-tensor", "per-token")


@dataclass(frozen=True)
class ActSpec:
    """How to quantize the input X of a linear (symmetric). Validated on construction; bad values raise."""

    fmt: str = "int8"  # "int8", "int4" (any "int2" .. "int8": symmetric, codes ±(2^(b−1) − 1)) or "fp8_e4m3"
    granularity: str = "per-token"  # "per-token": one scale per row of X; "per-tensor": one for all of X
    static: bool = False  # per-tensor only: the scale is fixed from calibration maxima (calibrate_act_scales)

    def __post_init__(self):
        if self.fmt not in ACT_FORMATS:
            raise ValueError(f"fmt must be one of {tuple(ACT_FORMATS)}, got {self.fmt!r}")
        if self.granularity not in ACT_GRANULARITIES:
            raise ValueError(f"granularity must be one of {ACT_GRANULARITIES}, got {self.granularity!r}")
        if not isinstance(self.static, bool):
            raise ValueError(f"static must be True or False, got {self.static!r}")
        if self.static and self.granularity == "per-token":
            raise ValueError(
                "static scales exist per-tensor only (a per-token scale comes from each token at run time): "
                "use ActSpec(fmt, 'per-tensor', static=True) or ActSpec(fmt, 'per-token')"
            )

    @property
    def qmax(self) -> float:
        """Largest code magnitude: 127 (int8), 7 (int4), 1 (int2), 448 (fp8_e4m3)."""
        return ACT_FORMATS[self.fmt]

    @property
    def label(self) -> str:
        """E.g. 'A8 per-token', 'A4 per-tensor', 'FP8 per-tensor static'."""
        name = "FP8" if self.fmt == "fp8_e4m3" else f"A{self.fmt.removeprefix('int')}"
        return f"{name} {self.granularity}{' static' if self.static else ''}"


def _static_scale(scale, x: torch.Tensor) -> torch.Tensor:
    if scale is None:
        raise ValueError("a static spec needs its calibrated scale: pass scale= (see calibrate_act_scales)")
    s = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
    if s.numel() != 1 or not bool(torch.isfinite(s).all() and (s >= 0).all()):
        raise ValueError(f"a static per-tensor scale is one finite number >= 0, got {scale!r}")
    return s.reshape(())


def fake_quantize_act(x: torch.Tensor, spec: ActSpec, scale=None) -> torch.Tensor:
    """x̂ = C · scale (see the module docstring): x (..., features) -> same shape and dtype, computed in float32.

    per-token: scale (..., 1) from each row's absmax; per-tensor: one scale from the absmax of all of x, or,
    when spec.static, the given `scale` (a number or one-element tensor) and values beyond it clipped.

    >>> x = torch.tensor([[127.0, -3.5, 2.5, 0.4], [0.0, 0.0, 0.0, 0.0]])
    >>> fake_quantize_act(x, ActSpec("int8", "per-token")).tolist()  # scale 1: halves round to even
    [[127.0, -4.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    """
    if not isinstance(spec, ActSpec):
        raise ValueError(f"spec must be an ActSpec, got {type(spec).__name__}")
    check_tensor(x)
    X = x.float()
    if spec.static:
        s = _static_scale(scale, x)
    elif scale is not None:
        raise ValueError(f"{spec.label} computes its scale from x; a given scale needs static=True")
    else:
        absmax = X.abs().amax(-1, keepdim=True) if spec.granularity == "per-token" else X.abs().amax()
        s = absmax / spec.qmax
    safe = torch.where(s > 0, s, 1.0)  # absmax 0 means x = 0: divide by 1, not 0 (0/0 would be NaN)
    if spec.fmt == "fp8_e4m3":
        C = round_to((X / safe).clamp(-spec.qmax, spec.qmax), spec.fmt)  # saturate, as FP8 kernels do
    else:
        C = round_to_grid(X, safe, 0, -spec.qmax, spec.qmax)
    return (C * s).to(x.dtype)


def output_error(X: torch.Tensor, W: torch.Tensor, spec: ActSpec, scale=None) -> float:
    """What quantizing one linear's input alone costs its output: ‖X̂Wᵀ − XWᵀ‖² / ‖XWᵀ‖², X̂ = fake_quantize_act(X).

    X (tokens, in_features) the captured input, W (out_features, in_features) the weight, kept in float so that
    only the activation format is measured. 0 for a lossless format; 1 when X̂ = 0.

    >>> X = torch.tensor([[100.0, 1.0, -1.0], [2.0, 1.0, 0.5]])  # channel 0: an outlier
    >>> W = torch.tensor([[0.0, 1.0, 1.0]])  # an output that reads the ordinary channels only
    >>> output_error(X, W, ActSpec("int4", "per-tensor"))  # one step, 100/7: every ordinary value rounds to 0
    1.0
    >>> round(output_error(X, W, ActSpec("int4", "per-token")), 3)  # row 2 gets its own step, 2/7
    0.002
    """
    check_tensor(W)
    Y = X.float() @ W.float().T
    error = (fake_quantize_act(X, spec, scale).float() - X.float()) @ W.float().T
    return float(error.pow(2).sum() / Y.pow(2).sum().clamp_min(torch.finfo(torch.float32).tiny))


# --- on a model ---------------------------------------------------------------------------------------------


@contextmanager
def quantize_activations(model: nn.Module, spec: ActSpec, *, scales=None, skip=("lm_head",)):
    """Within the block, every decoder linear fake-quantizes its input before its product; yields their names.

    Forward pre-hooks replace the input X of each linear by fake_quantize_act(X, spec[, scales[name]]); they
    are removed on exit, even after an exception, so the model is exactly what it was. The weights are whatever
    the model holds: under this block a weight-quantized model is W4A8, W8A8, ... The lm_head and embeddings
    are not decoder linears and are never touched; `skip` leaves more in float (e.g. ("mlp.down_proj",)).
    scales: for static specs, name -> scale from calibrate_act_scales.
    """
    if not isinstance(spec, ActSpec):
        raise ValueError(f"spec must be an ActSpec, got {type(spec).__name__}")
    linears = decoder_linears(model, skip)
    if spec.static:
        missing = sorted(set(linears) - set(scales or {}))
        if missing:
            more = " ..." if len(missing) > 3 else ""
            raise ValueError(
                f"{spec.label} needs a scale for every linear (calibrate_act_scales); none for {missing[:3]}{more}"
            )
    elif scales is not None:
        raise ValueError(f"{spec.label} computes its scales at run time: pass scales only with static=True")

    def pre_hook(name):
        scale = scales[name] if spec.static else None
        return lambda module, args: (fake_quantize_act(args[0], spec, scale), *args[1:])

    handles = []
    try:
        for name, linear in linears.items():
            handles.append(linear.register_forward_pre_hook(pre_hook(name)))
        yield list(linears)
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def channel_absmax(
    model: nn.Module, windows, *, bos_token_id: int | str | None = "auto", progress: bool = False
) -> dict[str, torch.Tensor]:
    """max_t |X[t, j]| per input channel j of every decoder linear over `windows` (n, seq): name ->
    (in_features,) float32 on the CPU. One forward pass per window, BOS first (`qviz.data.with_bos`): its
    activations are counted, as the linears see them when the model is evaluated."""
    ids, _ = with_bos(model, windows, bos_token_id, "calibration windows")
    absmax: dict[str, torch.Tensor] = {}

    def pre_hook(name):
        def record(module, args):
            m = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).float().cpu()
            absmax[name] = torch.maximum(absmax[name], m) if name in absmax else m

        return record

    handles = [linear.register_forward_pre_hook(pre_hook(n)) for n, linear in decoder_linears(model).items()]
    device = next(model.parameters()).device
    try:
        for i in tqdm(range(len(ids)), desc="activation absmax", disable=not progress):
            model(input_ids=ids[i : i + 1].to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return absmax


def calibrate_act_scales(
    model: nn.Module,
    windows,
    spec: ActSpec,
    *,
    bos_token_id: int | str | None = "auto",
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Static per-tensor scales, name -> absmax / qmax (0-d float32), absmax over every calibration token and
    channel of the linear's input; pass them to quantize_activations(model, spec, scales=...)."""
    if not isinstance(spec, ActSpec) or spec.granularity != "per-tensor":
        raise ValueError(
            f"static scales are per-tensor: pass ActSpec(fmt, 'per-tensor', static=True), got {spec!r}"
        )
    absmax = channel_absmax(model, windows, bos_token_id=bos_token_id, progress=progress)
    return {name: m.max() / spec.qmax for name, m in absmax.items()}
