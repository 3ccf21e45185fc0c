"""Round-to-nearest (RTN) over a whole model: every linear inside the decoder layers gets W ← Q(W), one
`qviz.quant.quantize` each, with no data at all. It is the baseline that GPTQ and AWQ must beat.

    result = quantize_model(model, QuantSpec(bits=4, group_size=64))                # weights only
    result = quantize_model(model, QuantSpec(bits=4, group_size=64), windows)       # + output errors

Without calibration windows the report has the weight errors (weight_mse, sqnr_db). With windows, RTN goes
through the shared layer-by-layer driver (`qviz.calib.driver.quantize_layerwise`) with inputs, only to
*measure*: each linear's output error ‖WX − QX‖² / ‖WX‖² on the inputs it receives in the already-quantized
model. The rounding itself is identical either way. Embeddings and lm_head are left in float.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .arch import ArchFamily, linear_layers
from .calib.capture import LayerInputs, collect_hessians
from .calib.driver import quantize_layerwise
from .calib.report import linear_report
from .quant import QuantizedTensor, QuantSpec, dequantize, quantize
from .result import QuantResult

__all__ = ["RTN", "quantize_model"]


@dataclass(frozen=True)
class RTN:
    """Round-to-nearest as a layer method for `qviz.calib.driver.quantize_layerwise`."""

    spec: QuantSpec
    name: ClassVar[str] = "rtn"
    options: ClassVar[dict] = {}  # RTN has none

    def __post_init__(self):
        if not isinstance(self.spec, QuantSpec):
            raise ValueError(f"spec must be a qviz.quant.QuantSpec, got {type(self.spec).__name__}")

    def quantize_layer(
        self, layer: nn.Module, inputs: LayerInputs | None, family: ArchFamily
    ) -> tuple[list[dict], dict[str, QuantizedTensor]]:
        linears = linear_layers(layer, family)
        hessians = collect_hessians(layer, linears, inputs) if inputs is not None else {}
        rows, quantized = [], {}
        for name, linear in linears.items():
            W = linear.weight.data
            quantized[name] = quantize(W, self.spec)
            Q = dequantize(quantized[name])
            rows.append(linear_report(name, W, Q, hessians[name].H if hessians else None))
            W.copy_(Q)
        return rows, quantized


@torch.no_grad()
def quantize_model(
    model: nn.Module,
    spec: QuantSpec,
    windows=None,
    *,
    n_layers: int | None = None,
    batch_size: int = 8,
    bos_token_id: int | str | None = "auto",
    progress: bool = True,
) -> QuantResult:
    """RTN on every linear inside the decoder layers of `model` (the first `n_layers` of them), in place.

    Returns a `QuantResult` with one row per linear: {"layer", "linear", "shape", "weight_mse", "sqnr_db"}
    and, when `windows` (n, seq) are given, "output_mse" and "output_rel_error"
    (see `qviz.calib.report.linear_report`).

    Raises ValueError before changing anything if `spec` cannot quantize some linear (e.g. group_size 128
    does not divide SmolLM2's in_features 576; 32, 64, 96 and 192 do).
    """
    return quantize_layerwise(
        model, RTN(spec), windows, n_layers=n_layers, batch_size=batch_size, bos_token_id=bos_token_id,
        progress=progress,
    )  # fmt: skip
