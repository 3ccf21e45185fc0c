"""Round-to-nearest (RTN) over a whole model: every linear inside the decoder layers gets W ← Q(W), one
`qviz.quant.fake_quantize` each, with no data at all. It is the baseline that GPTQ and AWQ must beat.

    rows = quantize_model(model, QuantSpec(bits=4, group_size=64))                  # weights only
    rows = quantize_model(model, QuantSpec(bits=4, group_size=64), windows)         # + output errors

Without calibration windows the report has the weight errors (weight_mse, sqnr_db). With windows, RTN goes
through the shared layer-by-layer driver (`qviz.calib.quantize_layerwise`) only to *measure*: each linear's
output error ‖WX − QX‖² / ‖WX‖² on the inputs it receives in the already-quantized model. The rounding itself
is identical either way. Embeddings and lm_head are left in float.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .arch import ArchFamily, decoder_layers, family_of, linear_layers
from .calib import LayerInputs, check_spec, collect_hessians, linear_report, quantize_layerwise
from .quant import QuantSpec, fake_quantize

__all__ = ["RTN", "quantize_model"]


@dataclass(frozen=True)
class RTN:
    """Round-to-nearest as a layer method for `qviz.calib.quantize_layerwise`."""

    spec: QuantSpec

    def __post_init__(self):
        if not isinstance(self.spec, QuantSpec):
            raise ValueError(f"spec must be a qviz.quant.QuantSpec, got {type(self.spec).__name__}")

    def quantize_layer(self, layer: nn.Module, inputs: LayerInputs, family: ArchFamily) -> list[dict]:
        linears = linear_layers(layer, family)
        hessians = collect_hessians(layer, linears, inputs)
        rows = []
        for name, linear in linears.items():
            W = linear.weight.data
            Q = fake_quantize(W, self.spec)
            rows.append(linear_report(name, W, Q, hessians[name].H))
            W.copy_(Q)
        return rows


@torch.no_grad()
def quantize_model(
    model: nn.Module,
    spec: QuantSpec,
    windows=None,
    *,
    batch_size: int = 8,
    bos_token_id: int | str | None = "auto",
    progress: bool = True,
) -> list[dict]:
    """RTN on every linear inside the decoder layers of `model`, in place. Returns one row per linear:
    {"layer", "linear", "shape", "weight_mse", "sqnr_db"} and, when `windows` (n, seq) are given,
    "output_mse" and "output_rel_error" (see `qviz.calib.linear_report`).

    Raises ValueError before changing anything if `spec` cannot quantize some linear (e.g. group_size 128
    does not divide SmolLM2's in_features 576; 32, 64, 96 and 192 do).
    """
    check_spec(model, spec)
    if windows is not None:
        return quantize_layerwise(
            model, RTN(spec), windows, batch_size=batch_size, bos_token_id=bos_token_id, progress=progress
        )
    family, rows = family_of(model), []
    for index, layer in enumerate(tqdm(decoder_layers(model), desc="quantize RTN", disable=not progress)):
        for name, linear in linear_layers(layer, family).items():
            W = linear.weight.data
            Q = fake_quantize(W, spec)
            rows.append({"layer": index, **linear_report(name, W, Q)})
            W.copy_(Q)
    return rows
