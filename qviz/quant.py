"""Affine (uniform) quantization: the primitives every method in qviz is built from.

A b-bit integer grid has 2**b levels. A floating-point value w is stored as an integer code

    q = clamp(round(w / scale) + zero_point, qmin, qmax)        (quantize)
    w_hat = (q - zero_point) * scale                             (dequantize)

and `w_hat - w` is the rounding error. Everything else is about choosing `scale` and `zero_point`:

- symmetric:  qmin, qmax = -2**(b-1), 2**(b-1) - 1;  zero_point = 0;  the grid is centred on zero and
  absmax = max|w| is spread over all 2**b codes: scale = 2·absmax / (2**b - 1) = absmax / (qmax + ½). This is
  the grid of the GPTQ reference code, AutoGPTQ/GPTQModel and compressed-tensors: at 4 bits scale = absmax / 7.5,
  codes -8..7, and the largest positive weight lands on code 7 (7.5 rounds to 8, clamped: an error of ½ step).
  `restricted_range=True` gives the textbook "absmax" grid instead: scale = absmax / qmax (absmax / 7 at 4 bits),
  every weight within half a step, but the code -2**(b-1) is never used: 15 of 16 levels at 4 bits.
- asymmetric: qmin, qmax = 0, 2**b - 1;  the range [min, max] (widened to include 0, so that 0 is exact)
  is spread over all 2**b levels: scale = (max - min) / qmax,  zero_point = clamp(round(-min / scale), qmin, qmax).

Every method rounds with one primitive, `round_to_grid`: codes = clamp(round(w / scale) + zero_point, qmin, qmax).

Granularity is one idea, not three code paths: a weight W of shape (out_features, in_features) is viewed as
rows of groups, and one (scale, zero_point) pair is chosen per group.

- "tensor":  one group holding every element          -> qparams of shape (1, 1)
- "channel": one group per output row                 -> qparams of shape (out_features, 1)
- "group":   rows cut into groups of `group_size`     -> qparams of shape (out_features, in_features // group_size)

Example: 4-bit symmetric, per-tensor, on w = [-7.5, 0.0, 3.5]: absmax = 7.5, scale = 7.5 / 7.5 = 1, and
codes = [-8, 0, 4] (-7.5 and 3.5 are halves: torch.round takes the even neighbour). The restricted grid has
scale = 7.5 / 7 ≈ 1.07 and codes [-7, 0, 3].

>>> quantize(torch.tensor([-7.5, 0.0, 3.5]), QuantSpec(bits=4, granularity="tensor")).codes.tolist()
[-8, 0, 4]
>>> spec = QuantSpec(bits=4, granularity="tensor", restricted_range=True)
>>> quantize(torch.tensor([-7.5, 0.0, 3.5]), spec).codes.tolist()
[-7, 0, 3]
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

GRANULARITIES = ("tensor", "channel", "group")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
MIN_BITS, MAX_BITS = 2, 16
# qviz computes and stores in float32: normal numbers from 2^-126 ≈ 1.2e-38 to 3.4e38
_F32 = torch.finfo(torch.float32)


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize a weight. Validated on construction; bad values raise ValueError."""

    bits: int = 4  # width of the integer codes, from 2 to 16
    symmetric: bool = True  # grid centred on zero (zero_point 0) or spread over [min, max]
    group_size: int | None = None  # elements per group along in_features (e.g. 128); None: no groups
    granularity: str | None = None  # "tensor", "channel" (one scale per output row) or "group";
    #                                  None: "group" when group_size is given, else "channel"
    restricted_range: bool = False  # symmetric only: scale = absmax / qmax (the textbook grid, code -2^(b-1)
    #                                 never used) instead of absmax / (qmax + ½) (every code used)
    clip_ratio: float = 1.0  # shrink the range to clip_ratio * (min, max) before choosing the scale
    mse_clip: bool = False  # search, per group, the clip ratio in [0.5, 1] that minimizes the MSE

    def __post_init__(self):
        if self.granularity is None:
            object.__setattr__(self, "granularity", "channel" if self.group_size is None else "group")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise ValueError(f"bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {self.bits!r}")
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(f"bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {self.bits}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        for name in (
            "symmetric",
            "mse_clip",
        ):  # symmetric="False" is a true string: say so, not grid silently
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.granularity == "group":
            if (
                isinstance(self.group_size, bool)
                or not isinstance(self.group_size, int)
                or self.group_size < 1
            ):
                raise ValueError(
                    f"granularity='group' needs a positive integer group_size (e.g. 32, 64, 128), "
                    f"got {self.group_size!r}"
                )
        elif self.group_size is not None:
            raise ValueError(
                f"group_size applies only to granularity='group'; use group_size=None with "
                f"granularity={self.granularity!r}"
            )
        if not isinstance(self.restricted_range, bool) or (self.restricted_range and not self.symmetric):
            raise ValueError(
                "restricted_range (scale = absmax / qmax) applies to symmetric grids only: "
                f"got restricted_range={self.restricted_range!r}, symmetric={self.symmetric!r}"
            )
        if not (isinstance(self.clip_ratio, (int, float)) and 0.0 < self.clip_ratio <= 1.0):
            raise ValueError(f"clip_ratio must be in (0, 1], got {self.clip_ratio!r}")
        if self.mse_clip and self.clip_ratio != 1.0:
            raise ValueError("mse_clip searches the clip ratio itself: leave clip_ratio at 1.0")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    @property
    def label(self) -> str:
        """A short human-readable name, e.g. 'INT4 sym g128' ('INT4 sym±7 g128' for the restricted grid)."""
        gran = {"tensor": "per-tensor", "channel": "per-channel"}.get(self.granularity, f"g{self.group_size}")
        kind = "asym" if not self.symmetric else f"sym±{self.qmax}" if self.restricted_range else "sym"
        return f"INT{self.bits} {kind} {gran}"


@dataclass(frozen=True)
class QuantizedTensor:
    """Integer codes plus what is needed to turn them back into floats.

    codes: same shape as the input, int32, values in [spec.qmin, spec.qmax]
    scale, zero_point: (rows, n_groups), float32 and int32; rows = prod(shape[:-1]) ("tensor": (1, 1));
        scales positive and finite, zero points in [spec.qmin, spec.qmax] (0 on symmetric grids)
    g_idx: None when input column k belongs to group k // group_size (contiguous groups, the usual case);
        else (in_features,) int32, the group of every input column: GPTQ's act-order without static groups
        forms its groups in processing order, and checkpoints store that map (GPTQ's `g_idx`).
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    spec: QuantSpec
    dtype: torch.dtype = torch.float32  # dtype of the original tensor, restored by dequantize
    g_idx: torch.Tensor | None = None


def check_tensor(w: torch.Tensor, spec: QuantSpec | None = None, *, finite: bool = True) -> None:
    """Raise ValueError unless w is a non-empty, finite, floating-point tensor that `spec` can group.

    finite=False skips the pass over every value that looks for NaN/Inf (for callers that detect them
    more cheaply, as choose_qparams does from the group minima and maxima: NaN and Inf propagate into them).
    """
    if not isinstance(w, torch.Tensor):
        raise ValueError(f"expected a torch.Tensor, got {type(w).__name__}")
    if w.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"unsupported dtype {w.dtype}: pass a floating-point tensor (float32, float16, bfloat16 or float64)"
        )
    if w.numel() == 0:
        raise ValueError(f"cannot quantize an empty tensor (shape {tuple(w.shape)})")
    if w.dim() == 0:
        raise ValueError("cannot quantize a 0-d tensor: pass at least one dimension")
    if finite and not torch.isfinite(w).all():
        n_nan, n_inf = int(torch.isnan(w).sum()), int(torch.isinf(w).sum())
        raise ValueError(
            f"tensor has {n_nan} NaN and {n_inf} Inf values: only finite values can be quantized"
        )
    if finite and w.dtype == torch.float64 and w.abs().max() > _F32.max:
        raise ValueError(
            f"float64 values up to {w.abs().max().item():.3g} lie beyond float32's range (±{_F32.max:.3g}), in "
            "which qviz computes scales and codes: divide the tensor by a power of two before quantizing it and "
            "multiply the dequantized values back"
        )
    if spec is not None and spec.granularity == "group" and w.shape[-1] % spec.group_size:
        divisors = [d for d in (16, 32, 64, 96, 128, 192, 256) if w.shape[-1] % d == 0]
        raise ValueError(
            f"group_size {spec.group_size} does not divide the row length {w.shape[-1]}; "
            f"group sizes that do include {divisors or [w.shape[-1]]}"
        )


def block_rows(W, block: int, fmt: str, note: str = "") -> torch.Tensor:
    """W (rows, columns) as float32 on the CPU, checked for a block format that stores each row in blocks of
    `block` weights (GGUF's, MXFP4, NVFP4, NF4): 2-D, a row length `block` divides (`note` is added to that
    message), finite values. Raises ValueError saying what is allowed."""
    if not isinstance(W, torch.Tensor) or W.dim() != 2:
        raise ValueError(
            f"W must be a 2-D tensor (rows, columns), got {getattr(W, 'shape', type(W).__name__)}"
        )
    if W.shape[1] % block:
        raise ValueError(
            f"{fmt} stores rows in blocks of {block}: a row of {W.shape[1]} does not divide{note}"
        )
    x = W.detach().to("cpu", torch.float32)
    if not torch.isfinite(x).all():
        raise ValueError("W has NaN or Inf values: only finite weights can be quantized")
    return x


def check_quantized(qt: QuantizedTensor, name: str | None = None) -> None:
    """Raise ValueError unless qt is what `quantize` makes: integer codes and zero points inside the code range
    (zero points 0 on symmetric grids), positive finite scales, and qparams of the shape its codes, spec and
    g_idx need. `name` (e.g. a linear's) starts the message. Checkpoint and result loaders call it, so a
    damaged or foreign file is refused instead of dequantized into wrong numbers.
    """
    where = f"{name}: " if name else ""
    if not isinstance(qt, QuantizedTensor):
        raise ValueError(f"{where}expected a qviz.quant.QuantizedTensor, got {type(qt).__name__}")
    spec, codes, scale, zero_point = qt.spec, qt.codes, qt.scale, qt.zero_point
    if qt.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{where}dtype must be one of {FLOAT_DTYPES}, got {qt.dtype}")
    for what, t in (("codes", codes), ("zero_point", zero_point)):
        if not _is_integer(t):
            raise ValueError(f"{where}{what} must be an integer tensor, got {getattr(t, 'dtype', type(t))}")
    if codes.dim() == 0 or codes.numel() == 0:
        raise ValueError(f"{where}codes must be a non-empty tensor, got shape {tuple(codes.shape)}")
    if not isinstance(scale, torch.Tensor) or not scale.is_floating_point():
        raise ValueError(
            f"{where}scale must be a floating-point tensor, got {getattr(scale, 'dtype', type(scale))}"
        )
    if qt.g_idx is None:
        expected = _qparams_shape(codes.shape, spec)
    else:
        k, n_groups = codes.shape[-1], scale.shape[-1] if scale.dim() == 2 else 0
        expected = (math.prod(codes.shape[:-1]), n_groups)
        if codes.dim() != 2 or tuple(qt.g_idx.shape) != (k,) or qt.g_idx.is_floating_point():
            raise ValueError(
                f"{where}g_idx must be an integer tensor of shape ({k},) for 2-D codes, "
                f"got {tuple(qt.g_idx.shape)} {qt.g_idx.dtype} for codes {tuple(codes.shape)}"
            )
        if n_groups < 1 or qt.g_idx.min() < 0 or qt.g_idx.max() >= n_groups:
            raise ValueError(f"{where}g_idx values must lie in [0, {n_groups - 1}] (one per group of scale)")
    for what, t in (("scale", scale), ("zero_point", zero_point)):
        if tuple(t.shape) != expected:
            raise ValueError(
                f"{where}{what} must have shape {expected} for codes of shape {tuple(codes.shape)} under "
                f"{spec.label}, got {tuple(t.shape)}"
            )
    _check_scale(scale, where)
    _check_zero_point(zero_point, spec, where)
    lo, hi = torch.aminmax(codes)
    if lo < spec.qmin or hi > spec.qmax:
        raise ValueError(
            f"{where}codes must lie in [{spec.qmin}, {spec.qmax}] for {spec.label}, got [{lo}, {hi}]"
        )


def _is_integer(t) -> bool:
    return isinstance(t, torch.Tensor) and not (
        t.is_floating_point() or t.is_complex() or t.dtype == torch.bool
    )


def _qparams_shape(shape: tuple[int, ...], spec: QuantSpec) -> tuple[int, int]:
    """(rows, n_groups) of the scale and zero point of a tensor of `shape` under `spec`."""
    if spec.granularity == "tensor":
        return (1, 1)
    rows = math.prod(shape[:-1])
    return (rows, 1) if spec.granularity == "channel" else (rows, shape[-1] // spec.group_size)


def _check_scale(scale: torch.Tensor, where: str = "") -> None:
    bad = ~(torch.isfinite(scale) & (scale > 0))
    if bad.any():
        raise ValueError(
            f"{where}scale must be positive and finite (in float32, as qviz stores it): {int(bad.sum())} of "
            f"{scale.numel()} values are not (e.g. {scale[bad].flatten()[0].item()})"
        )


def _check_zero_point(zero_point: torch.Tensor, spec: QuantSpec, where: str = "") -> None:
    lo, hi = int(zero_point.min()), int(zero_point.max())
    if spec.symmetric and (lo, hi) != (0, 0):
        raise ValueError(
            f"{where}a symmetric grid ({spec.label}) has zero_point 0, got values in [{lo}, {hi}]: "
            "pass zeros, or use an asymmetric spec (symmetric=False)"
        )
    if lo < spec.qmin or hi > spec.qmax:
        raise ValueError(
            f"{where}zero_point must lie in the code range [{spec.qmin}, {spec.qmax}] of {spec.label}, "
            f"got values in [{lo}, {hi}]"
        )


def _user_qparams(w: torch.Tensor, spec: QuantSpec, scale, zero_point) -> tuple[torch.Tensor, torch.Tensor]:
    """Given qparams checked against w and spec: (scale as float32, zero_point as int32)."""
    if (scale is None) != (zero_point is None):
        raise ValueError("pass both scale and zero_point, or neither")
    check_tensor(w, spec)
    expected = _qparams_shape(w.shape, spec)
    for what, t in (("scale", scale), ("zero_point", zero_point)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != expected:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(
                f"{what} must be a tensor of shape {expected} (rows, groups) for a tensor of shape "
                f"{tuple(w.shape)} under {spec.label}, got {got}"
            )
    if not scale.is_floating_point():
        raise ValueError(f"scale must be a floating-point tensor, got {scale.dtype}")
    if not _is_integer(zero_point):
        raise ValueError(
            f"zero_point must be an integer tensor (codes are integers), got {zero_point.dtype}: "
            "pass zero_point.round().to(torch.int32)"
        )
    _check_scale(scale.float())
    _check_zero_point(zero_point, spec)
    return scale.float(), zero_point.to(torch.int32)


def _grouped(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """View w as (rows, n_groups, group_len) in float32: the one reshape behind every granularity."""
    w = w.float()
    if spec.granularity == "tensor":
        return w.reshape(1, 1, -1)
    rows = w.reshape(-1, w.shape[-1])  # (rows, in_features)
    if spec.granularity == "channel":
        return rows.unsqueeze(1)
    return rows.reshape(rows.shape[0], -1, spec.group_size)


def _qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec):
    """scale, zero_point from per-group ranges lo <= 0 <= hi (any shape)."""
    if spec.symmetric:
        levels = (
            spec.qmax if spec.restricted_range else spec.qmax + 0.5
        )  # absmax / 7 or absmax / 7.5 (4 bits)
        scale = torch.maximum(hi, -lo) / levels
    else:
        scale = (hi - lo) / spec.qmax
        # hi - lo overflows to inf when the range is wider than the dtype's largest value (e.g. ±3e38 in
        # float32); dividing first cannot overflow
        scale = torch.where(torch.isfinite(scale), scale, hi / spec.qmax - lo / spec.qmax)
    scale = _stored_scale(scale)
    if spec.symmetric:
        return scale, torch.zeros_like(scale, dtype=torch.int32)
    zero_point = torch.clamp(torch.round(-lo / scale), spec.qmin, spec.qmax).to(torch.int32)
    return scale, zero_point


def _stored_scale(scale: torch.Tensor) -> torch.Tensor:
    """Scales (>= 0) as qviz uses them.

    An all-zero group has scale 0; any scale represents it exactly, so it gets 1 (no division by zero). A scale
    below float32's smallest normal number 2^-126 (a group whose largest |w| is about 1e-37 or less) would be
    subnormal, too coarse to keep w / scale on the grid: it gets 2^-126, whose half step still covers the group.
    """
    return torch.where(scale > 0, scale.clamp(min=_F32.tiny), torch.ones_like(scale))


def round_to_grid(x: torch.Tensor, scale, zero_point, qmin: int, qmax: int) -> torch.Tensor:
    """Integer codes clamp(round(x / scale) + zero_point, qmin, qmax), returned as floats, with no checks.

    The one rounding step of qviz: `quantize`, `fake_quantize` and GPTQ's column loop all call it, so their
    codes agree bit for bit. Shapes broadcast (e.g. x (rows, n_groups, group_len) with scale (rows, n_groups, 1),
    or one column x (rows,) with its group's scale (rows,)). torch.round rounds halves to even.
    Dequantize with (codes - zero_point) * scale.

    >>> round_to_grid(torch.tensor([-4.0, 0.25, 0.75, 9.0]), 0.5, 0, -8, 7).tolist()  # w / scale: -8, ½, 1½, 18
    [-8.0, 0.0, 2.0, 7.0]
    """
    return (
        x.div(scale).round_().add_(zero_point).clamp_(qmin, qmax)
    )  # in place after the division: one allocation


def _fake(g: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Quantize-dequantize grouped values g (rows, n_groups, group_len) with qparams (rows, n_groups)."""
    s, z = scale.unsqueeze(-1), zero_point.unsqueeze(-1).to(g.dtype)
    return round_to_grid(g, s, z, spec.qmin, spec.qmax).sub_(z).mul_(s)


def _search_clip(g: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec, steps: int = 50):
    """Per group, the clip ratio r in [0.5, 1] whose range (r*lo, r*hi) gives the smallest MSE."""
    best_err = torch.full(lo.shape, float("inf"), device=g.device)
    best_lo, best_hi = lo.clone(), hi.clone()
    for r in torch.linspace(1.0, 0.5, steps + 1).tolist():
        scale, zero_point = _qparams_from_range(lo * r, hi * r, spec)
        err = (_fake(g, scale, zero_point, spec) - g).pow(2).mean(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo, best_hi = torch.where(better, lo * r, best_lo), torch.where(better, hi * r, best_hi)
    return best_lo, best_hi


def choose_qparams(w: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick (scale, zero_point), each of shape (rows, n_groups), for w under `spec`.

    The range of each group is [min(w), max(w)] widened to include 0, times `spec.clip_ratio`
    (values outside are clipped to the end codes), or the MSE-best ratio when `spec.mse_clip`.
    """
    check_tensor(w, spec, finite=False)
    g = _grouped(w, spec)
    lo, hi = torch.aminmax(g, dim=-1)
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        check_tensor(w, spec)  # raises: NaN or Inf values, or float64 values beyond float32's range
    lo, hi = lo.clamp(max=0.0) * spec.clip_ratio, hi.clamp(min=0.0) * spec.clip_ratio
    if spec.mse_clip:
        lo, hi = _search_clip(g, lo, hi, spec)
    return _qparams_from_range(lo, hi, spec)


def quantize(
    w: torch.Tensor,
    spec: QuantSpec,
    scale: torch.Tensor | None = None,
    zero_point: torch.Tensor | None = None,
) -> QuantizedTensor:
    """Integer codes for w. Pass `scale` and `zero_point` to reuse qparams chosen elsewhere (GPTQ does): shape
    (rows, n_groups) as `choose_qparams` returns, positive finite scales, integer zero points in
    [qmin, qmax] (0 on a symmetric grid); anything else raises ValueError. Values outside the grid's range
    are clipped to its end codes, as with the qparams quantize chooses under clip_ratio < 1."""
    if scale is None and zero_point is None:
        scale, zero_point = choose_qparams(w, spec)
    else:
        scale, zero_point = _user_qparams(w, spec, scale, zero_point)
    g = _grouped(w, spec)
    s, z = scale.unsqueeze(-1), zero_point.unsqueeze(-1)
    codes = round_to_grid(g, s, z, spec.qmin, spec.qmax).to(torch.int32)
    return QuantizedTensor(codes.reshape(w.shape), scale, zero_point, spec, w.dtype)


def dequantize(qt: QuantizedTensor) -> torch.Tensor:
    """Floats back from codes: (codes - zero_point) * scale, in the original dtype.

    With a `g_idx`, input column k takes the qparams of group g_idx[k] (codes (rows, in_features)).
    Computed in float32, as GPTQ's column loop does. Raises ValueError for a QuantizedTensor that
    `check_quantized` refuses, or values beyond the range of the original dtype.
    """
    check_quantized(qt)
    scale = qt.scale.float()
    if qt.g_idx is not None:
        g = qt.g_idx.long()
        w_hat = (qt.codes - qt.zero_point[:, g]) * scale[:, g]
    else:
        g = _grouped(qt.codes, qt.spec)
        w_hat = ((g - qt.zero_point.unsqueeze(-1)) * scale.unsqueeze(-1)).reshape(qt.codes.shape)
    return _in_dtype(w_hat, qt.dtype, scale, qt.zero_point, qt.spec)


def _in_dtype(w_hat: torch.Tensor, dtype: torch.dtype, scale, zero_point, spec: QuantSpec) -> torch.Tensor:
    """w_hat (computed in float32) cast to `dtype`, refused where a value does not fit. A grid's end codes can
    lie up to half a step beyond the range it was chosen for (the symmetric grid's qmin, or after rounding
    the zero point), so a tensor reaching the largest value of its dtype (or of float32) can dequantize past
    it. Only when the grid's extremes could overflow (a check on the qparams alone) are the values checked."""
    out = w_hat.to(dtype)
    reach = (zero_point - spec.qmin).abs().maximum((spec.qmax - zero_point).abs()) * scale.double()
    largest = min(torch.finfo(dtype).max, _F32.max)
    if reach.max() > largest and not torch.isfinite(out).all():
        where = dtype if largest < _F32.max else f"{dtype} computed in float32"
        raise ValueError(
            f"dequantized values overflow {where} (largest {largest:.6g}): this grid's codes reach "
            f"±{reach.max().item():.6g}, since a grid's end codes can lie up to half a step beyond the range "
            "it was chosen for. Scale w down a little (e.g. w / 2, and multiply back), or quantize a float32 "
            "copy of a float16 tensor (w.float())"
        )
    return out


def fake_quantize(
    w: torch.Tensor,
    spec: QuantSpec,
    scale: torch.Tensor | None = None,
    zero_point: torch.Tensor | None = None,
) -> torch.Tensor:
    """Quantize then dequantize in one pass: the float tensor a quantized model actually computes with.
    Takes `scale` and `zero_point` as `quantize` does, and refuses what `dequantize` refuses."""
    if scale is None and zero_point is None:
        scale, zero_point = choose_qparams(w, spec)
    else:
        scale, zero_point = _user_qparams(w, spec, scale, zero_point)
    w_hat = _fake(_grouped(w, spec), scale, zero_point, spec).reshape(w.shape)
    return _in_dtype(w_hat, w.dtype, scale, zero_point, spec)


# --- error metrics -------------------------------------------------------------------------------------------


def _same_shape(w: torch.Tensor, w_hat: torch.Tensor) -> None:
    if w.shape != w_hat.shape:  # broadcasting (n, 1) against (n,) would average the wrong differences
        raise ValueError(
            f"w and w_hat must have the same shape, got {tuple(w.shape)} and {tuple(w_hat.shape)}"
        )


def mse(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """Mean squared error."""
    _same_shape(w, w_hat)
    return (w.double() - w_hat.double()).pow(2).mean().item()


def max_abs_error(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """Largest absolute difference."""
    _same_shape(w, w_hat)
    return (w.double() - w_hat.double()).abs().max().item()


def sqnr_db(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 10·log10(Σw² / Σ(w - w_hat)²). Each extra bit adds ≈6.02 dB."""
    _same_shape(w, w_hat)
    signal = w.double().pow(2).sum().item()
    noise = (w.double() - w_hat.double()).pow(2).sum().item()
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


# --- storage accounting --------------------------------------------------------------------------------------


def bits_per_weight(
    spec: QuantSpec, shape: tuple[int, ...], scale_bits: int = 16, zero_point_bits: int | None = None
) -> float:
    """Average storage per weight, codes plus the scales and zero points that come with them.

    scale_bits: 16 for fp16 scales (the usual on-disk choice). zero_point_bits defaults to `spec.bits`
    for asymmetric specs (the zero point is stored like a code) and 0 for symmetric ones.

    >>> round(bits_per_weight(QuantSpec(bits=4, symmetric=False, group_size=128), (4096, 4096)), 3)
    4.156
    """
    if not shape or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1 for d in shape):
        raise ValueError(f"shape must be a tuple of positive integers, got {shape!r}")
    numel = math.prod(shape)
    if zero_point_bits is None:
        zero_point_bits = 0 if spec.symmetric else spec.bits
    if spec.granularity == "tensor":
        n_groups = 1
    elif spec.granularity == "channel":
        n_groups = numel // shape[-1]
    else:
        if shape[-1] % spec.group_size:
            raise ValueError(f"group_size {spec.group_size} does not divide the row length {shape[-1]}")
        n_groups = numel // spec.group_size
    return spec.bits + n_groups * (scale_bits + zero_point_bits) / numel


def storage_bytes(spec: QuantSpec, shape: tuple[int, ...], scale_bits: int = 16) -> float:
    """Bytes to store a tensor of `shape` under `spec`, scales and zero points included."""
    return bits_per_weight(spec, shape, scale_bits) * math.prod(shape) / 8
