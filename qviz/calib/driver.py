"""The layer-by-layer driver that RTN, GPTQ and AWQ share. It never holds more than one decoder layer's
activations:

    windows (n, seq) --embeddings--> inputs of layer 0 (+ the keyword arguments every layer receives)
    for each layer ℓ:
        quantize layer ℓ's linears in place, calibrated on `inputs`
        inputs <- layer ℓ(inputs)      # recomputed by the QUANTIZED layer: layer ℓ+1 is then calibrated on
                                       # what it will really receive

A method is either a `LayerMethod` (the whole layer at once: RTN, AWQ) or a `GroupMethod` (one group of
linears reading the same input, given H = 2XXᵀ/n of it: GPTQ), which the driver runs group by group in forward
order with `qviz.calib.sequential.quantize_sequential`; `AllGroupsAtOnce(method)` instead takes every group's H
from one pass of the float layer. Either returns (report rows, QuantizedTensors) for the layer; the driver
collects them, with the tensors the method changed outside the quantized weights (AWQ's folded norms), into
one `qviz.result.QuantResult`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from ..arch import ArchFamily, decoder_layers, family_of, input_groups, linear_layers
from ..quant import QuantizedTensor, QuantSpec, check_tensor
from ..result import QuantResult
from .capture import LayerInputs, capture_layer_inputs, collect_hessians, run_layer
from .sequential import quantize_sequential

__all__ = ["AllGroupsAtOnce", "GroupMethod", "LayerMethod", "check_spec", "quantize_layerwise"]


class LayerMethod(Protocol):
    """Quantizes a whole decoder layer at once (RTN, AWQ); the driver then recomputes the layer's outputs.
    `inputs` is None when the method runs without calibration data (RTN)."""

    name: str  # "rtn", "awq", ...: QuantResult.method
    spec: QuantSpec

    @property
    def options(self) -> dict: ...  # the method's own options, for QuantResult.options

    def quantize_layer(
        self, layer: nn.Module, inputs: LayerInputs | None, family: ArchFamily
    ) -> tuple[list[dict], dict[str, QuantizedTensor]]: ...


class GroupMethod(Protocol):
    """Quantizes one group of linears that read the same input, given H = 2XXᵀ/n of that input (GPTQ)."""

    name: str
    spec: QuantSpec

    @property
    def options(self) -> dict: ...

    def quantize_group(
        self, linears: dict[str, nn.Linear], H: torch.Tensor
    ) -> tuple[list[dict], dict[str, QuantizedTensor]]: ...


@dataclass(frozen=True)
class AllGroupsAtOnce:
    """A `GroupMethod` run as a `LayerMethod`: every group's H comes from ONE pass of the layer as it stands,
    before any of its linears is quantized (the GPTQ reference without --true-sequential), then the groups
    are quantized in order. Costs one more pass of the layer than `quantize_sequential`."""

    method: GroupMethod

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def spec(self) -> QuantSpec:
        return self.method.spec

    @property
    def options(self) -> dict:
        return self.method.options

    def quantize_layer(self, layer: nn.Module, inputs: LayerInputs, family: ArchFamily):
        hessians = collect_hessians(layer, linear_layers(layer, family), inputs)
        rows, quantized = [], {}
        for group in input_groups(layer, family):
            group_rows, group_quantized = self.method.quantize_group(group, hessians[next(iter(group))].H)
            rows += group_rows
            quantized.update(group_quantized)
        return rows, quantized


@torch.no_grad()
def quantize_layerwise(
    model: nn.Module,
    method: LayerMethod | GroupMethod,
    windows,
    *,
    batch_size: int = 8,
    bos_token_id: int | str | None = "auto",
    progress: bool = True,
    n_layers: int | None = None,
) -> QuantResult:
    """Quantize `model` in place, one decoder layer at a time, with `method`; returns its `QuantResult`.

    windows: (n, seq) token ids (e.g. `qviz.data.calib_windows(tok, n=128, seqlen=512)`), run in batches of
    `batch_size` windows, each prefixed with BOS (see `qviz.calib.capture.capture_layer_inputs`); None for a
    method that needs no data (RTN). Each report row is the method's dict for one linear, plus "layer": the
    layer index. n_layers: quantize only the first n decoder layers and leave the rest in float (quick
    experiments); None: all of them.
    """
    layers = decoder_layers(model)
    if n_layers is not None and (
        isinstance(n_layers, bool) or not isinstance(n_layers, int) or not 1 <= n_layers <= len(layers)
    ):
        raise ValueError(
            f"n_layers must be an integer from 1 to {len(layers)} (this model's decoder layers), or None; "
            f"got {n_layers!r}"
        )
    check_spec(model, method.spec)
    family = family_of(model)
    prefix = next(name for name, module in model.named_modules() if module is layers)
    result = QuantResult(method.name, method.spec, options=dict(method.options))
    was_training = model.training
    model.eval()
    try:
        if windows is not None:
            inputs, kwargs = capture_layer_inputs(
                model, windows, batch_size=batch_size, bos_token_id=bos_token_id
            )
        layers = layers[:n_layers]
        for index, layer in enumerate(tqdm(layers, desc=f"quantize {method.name}", disable=not progress)):
            before = _unquantized_state(layer, family)
            last = index + 1 == len(layers)  # its outputs feed nothing that is quantized: not computed
            if windows is None:
                rows, quantized = method.quantize_layer(layer, None, family)
            else:
                inputs = LayerInputs(inputs.hidden, kwargs[index])
                if hasattr(method, "quantize_group"):
                    rows, quantized, outputs = quantize_sequential(
                        layer, input_groups(layer, family), inputs, method.quantize_group, outputs=not last
                    )
                else:
                    rows, quantized = method.quantize_layer(layer, inputs, family)
                    outputs = [] if last else run_layer(layer, inputs)
                inputs = LayerInputs(outputs, kwargs[index])
            result.rows += [{"layer": index, **row} for row in rows]
            result.linears.update({f"{prefix}.{index}.{name}": qt for name, qt in quantized.items()})
            after = layer.state_dict()
            result.float_tensors.update(
                {
                    f"{prefix}.{index}.{k}": after[k].clone()
                    for k, t in before.items()
                    if not torch.equal(t, after[k])
                }
            )
    finally:
        model.train(was_training)
    return result


def _unquantized_state(layer: nn.Module, family: ArchFamily) -> dict[str, torch.Tensor]:
    """Copies of the layer's state outside its linears' weights (norms, biases): what a method may change
    besides the weights it quantizes, AWQ by folding 1/s into them. A few kB a layer."""
    weights = {f"{name}.weight" for name in linear_layers(layer, family)}
    return {k: t.clone() for k, t in layer.state_dict().items() if k not in weights}


def check_spec(model: nn.Module, spec: QuantSpec) -> None:
    """Raise ValueError (naming the linear) before touching any weight if `spec` cannot quantize one of them,
    e.g. group_size 128 on SmolLM2's in_features 576."""
    if not isinstance(spec, QuantSpec):
        raise ValueError(f"spec must be a qviz.quant.QuantSpec, got {type(spec).__name__}")
    family = family_of(model)
    for index, layer in enumerate(decoder_layers(model)):
        for name, linear in linear_layers(layer, family).items():
            try:
                check_tensor(linear.weight, spec)
            except ValueError as err:
                raise ValueError(f"layer {index} {name} {tuple(linear.weight.shape)}: {err}") from None
