"""Capture what decoder layers and their linears see when the model reads calibration text.

Capturing layer 0's inputs uses the standard trick: replace every decoder layer's `forward` by a recorder
that stores its arguments, and raise an exception in the last one so the rest of the model (final norm,
lm_head) never runs. Recording every layer's keyword arguments matters: models such as Gemma 3 pass
different attention masks and rotary embeddings to sliding-window and full-attention layers.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..arch import decoder_layers, family_of, linear_layers
from ..data import with_bos
from .hessian import Hessian, HessianSet

__all__ = [
    "LayerInputs",
    "StopForward",
    "capture_layer_inputs",
    "capture_linear_inputs",
    "collect_hessians",
    "forwards_replaced",
    "linear_inputs",
    "run_layer",
]


@dataclass
class LayerInputs:
    """The calibration inputs of one decoder layer, one entry per forward call (a batch of windows)."""

    hidden: list[torch.Tensor]  # hidden_states per call: (batch, seq, hidden_size)
    kwargs: list[dict]  # the layer's keyword arguments per call: attention_mask, position_embeddings, ...

    @property
    def n_tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)


class StopForward(Exception):
    """Raised from a hook to end a forward call early: what comes after it is not needed."""


@torch.no_grad()
def capture_layer_inputs(
    model: nn.Module, windows, *, batch_size: int = 8, bos_token_id: int | str | None = "auto"
) -> tuple[LayerInputs, list[list[dict]]]:
    """Run `windows` (n, seq) up to the first decoder layer.

    bos_token_id: prepended to every window by `qviz.data.with_bos`; "auto" (default) takes
    `model.config.bos_token_id` when there is one, as `qviz.eval` does; None: raw windows.
    Returns (inputs of layer 0, kwargs[ℓ][call]: the keyword arguments layer ℓ receives for each call).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    windows, _ = with_bos(model, windows, bos_token_id, "calibration windows")
    layers = decoder_layers(model)
    device = model.get_input_embeddings().weight.device
    hidden, kwargs = [], [[] for _ in layers]

    def recorder(index):
        def forward(*args, **kw):
            h = args[0] if args else kw.pop("hidden_states")
            if index == 0:
                hidden.append(h)
            kwargs[index].append(kw)
            if index == len(layers) - 1:
                raise StopForward
            return h

        return forward

    with forwards_replaced({layer: recorder(index) for index, layer in enumerate(layers)}):
        for batch in windows.split(batch_size):
            try:
                model(input_ids=batch.to(device), use_cache=False)
            except StopForward:
                pass
    return LayerInputs(hidden, kwargs[0]), kwargs


@contextmanager
def forwards_replaced(forwards: dict[nn.Module, Callable]):
    """Within the block, module(...) runs forwards[module] instead of its forward (hooks still run): an
    instance attribute shadows the class's forward. Whatever instance forward was there before (e.g.
    accelerate's wrapper) is put back afterwards."""
    saved = {module: module.__dict__.get("forward") for module in forwards}
    for module, forward in forwards.items():
        module.forward = forward
    try:
        yield
    finally:
        for module, forward in saved.items():
            if forward is None:
                del module.forward
            else:
                module.forward = forward


def run_layer(layer: nn.Module, inputs: LayerInputs) -> list[torch.Tensor]:
    """The layer's output hidden_states for every call of `inputs`."""
    outputs = []
    with torch.no_grad():
        for h, kw in zip(inputs.hidden, inputs.kwargs):
            out = layer(h, **kw)
            outputs.append(out[0] if isinstance(out, tuple) else out)  # older transformers return tuples
    return outputs


def capture_linear_inputs(
    layer: nn.Module,
    linears: dict[str, nn.Linear],
    inputs: LayerInputs,
    fn: Callable[[str, torch.Tensor], None],
    *,
    outputs: bool = True,
) -> list[torch.Tensor]:
    """Run the layer on `inputs` and call fn(name, X) with each linear's input X, the very tensor it reads,
    (..., in_features) (do not modify it; linears that read the same tensor get the same object).

    Returns the layer's outputs (from the weights as they are now). outputs=False returns [] and stops each
    call as soon as every linear has shown its input: the rest of the layer (at least the last linear's
    product, e.g. down_proj's) is never computed.
    """
    seen: set[str] = set()

    def hook(name):
        def pre_hook(module, args):
            fn(name, args[0])
            seen.add(name)
            if not outputs and len(seen) == len(linears):
                raise StopForward

        return pre_hook

    handles = [linear.register_forward_pre_hook(hook(name)) for name, linear in linears.items()]
    try:
        if outputs:
            return run_layer(layer, inputs)
        with torch.no_grad():
            for h, kw in zip(inputs.hidden, inputs.kwargs):
                seen.clear()
                try:
                    layer(h, **kw)
                except StopForward:
                    pass
        return []
    finally:
        for handle in handles:
            handle.remove()


def collect_hessians(
    layer: nn.Module, linears: dict[str, nn.Linear], inputs: LayerInputs
) -> dict[str, Hessian]:
    """H = 2XXᵀ/n of every linear's input X over the calibration inputs of its layer (one pass); linears
    that read the same tensor share one Hessian (see `HessianSet`)."""
    hessians = HessianSet()
    handle = layer.register_forward_pre_hook(lambda module, args: hessians.new_call())
    try:
        capture_linear_inputs(layer, linears, inputs, hessians.add, outputs=False)  # only the inputs needed
    finally:
        handle.remove()
    return hessians.hessians


@torch.no_grad()
def linear_inputs(model, windows, layer: int, linear: str, *, bos_token_id="auto") -> torch.Tensor:
    """X (tokens, in_features): what the linear `linear` (e.g. "self_attn.k_proj") of decoder layer `layer`
    reads when the float `model` runs `windows` (n, seq), BOS-prefixed as in `capture_layer_inputs`.

    Runs the layers before `layer` only; nothing is modified. H = 2XᵀX/tokens is its Hessian.
    """
    layers = decoder_layers(model)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(layers):
        raise ValueError(f"layer must be an integer in [0, {len(layers) - 1}], got {layer!r}")
    linears = linear_layers(layers[layer], family_of(model))
    if linear not in linears:
        raise ValueError(f"unknown linear {linear!r}; layer {layer} has {sorted(linears)}")
    inputs, kwargs = capture_layer_inputs(model, windows, bos_token_id=bos_token_id)
    hidden = inputs.hidden
    for index in range(layer):  # the float layers before it: (batch, seq, hidden) per call
        hidden = run_layer(layers[index], LayerInputs(hidden, kwargs[index]))
    captured = []
    capture_linear_inputs(
        layers[layer], {linear: linears[linear]}, LayerInputs(hidden, kwargs[layer]),
        lambda name, X: captured.append(X.detach().reshape(-1, X.shape[-1]).clone()), outputs=False,
    )  # fmt: skip
    return torch.cat(captured)
