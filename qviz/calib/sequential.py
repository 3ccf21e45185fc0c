"""True-sequential calibration of one decoder layer (the GPTQ reference's --true-sequential): the layer's
groups of linears (those reading one tensor: q/k/v, then o, then gate/up, then down) are quantized in forward
order, and each group gets H = 2XXᵀ/n of the inputs it receives once every group before it is quantized, so
o_proj is calibrated on what the quantized q/k/v really produce.

The algorithm, written plainly, runs the layer once per group:

    for each group G, in forward order:
        X  = G's input, from running the layer (groups before G already quantized) on every calibration call
        quantize G with H = 2XXᵀ/n
    outputs = the layer run once more

`quantize_sequential` computes exactly this, but runs every linear's product and the attention only once per
call, as one forward pass would: each stage serves what earlier stages computed from a cache, and stops as
soon as it has what it needs (`_run_stage`, the one clever function here). Its test compares it with the
plain version above, group by group.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .capture import LayerInputs, StopForward, forwards_replaced
from .hessian import Hessian

__all__ = ["quantize_sequential"]


@torch.no_grad()
def quantize_sequential(
    layer: nn.Module,
    groups: list[dict[str, nn.Linear]],
    inputs: LayerInputs,
    quantize_group: Callable[[dict[str, nn.Linear], torch.Tensor], tuple[list[dict], dict]],
    *,
    outputs: bool = True,
) -> tuple[list[dict], dict, list[torch.Tensor]]:
    """Quantize one layer's linears group after group, in forward order, each on the inputs the quantized
    groups before it produce.

    groups: linears reading one tensor each, in forward order (`qviz.arch.input_groups`). quantize_group(group,
    H) quantizes a group in place and returns (its report rows, its QuantizedTensors by name). Returns (rows of
    all groups, QuantizedTensors of all groups, the layer's outputs; [] with outputs=False).
    Memory: one layer's cached outputs (for SmolLM2 about 5,800 floats per token at the peak, the down_proj
    stage: ten times its hidden state).
    """
    modules = dict(layer.named_modules())
    cache: dict[str, list] = {}  # submodule -> its output for every call, served instead of running it
    done: set[str] = set()
    rows, quantized = [], {}
    for index, group in enumerate(groups):
        done |= set(group)
        tops = {_largest_finished(modules, name, done) for name in group}
        H = Hessian(next(iter(group.values())).in_features)
        X, placeholders, returned = _run_stage(layer, inputs, cache, group, tops, H)
        group_rows, group_quantized = quantize_group(group, H.H)
        rows += group_rows
        quantized.update(group_quantized)
        if index + 1 == len(groups) and not outputs:
            return rows, quantized, []
        for name, linear in group.items():  # the quantized products, into the placeholders
            for x, out in zip(X, placeholders[name]):
                out.copy_(linear(x))
        for top in tops:
            if _returns_a_placeholder(returned[top], placeholders):
                cache[top] = returned[top]  # now holds the quantized products
            else:  # it computed something from a placeholder: serve the linears, run the module again
                cache.update({name: placeholders[name] for name in group if _inside(name, top)})
        for name in [m for m in cache if any(_inside(m, outer) and m != outer for outer in cache)]:
            del cache[name]  # inside a cached module, which is never run again
    outputs_, _, _ = _run_stage(layer, inputs, cache, {}, set(), None)
    return rows, quantized, outputs_


def _inside(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def _largest_finished(modules: dict[str, nn.Module], name: str, done: set[str]) -> str:
    """The largest submodule around linear `name` whose linears are all quantized: the linear itself while its
    siblings are not (q_proj before o_proj), the attention block once o_proj is done, the MLP with down_proj."""
    linears = {m for m, module in modules.items() if isinstance(module, nn.Linear)}
    around = [m for m in modules if m and _inside(name, m) and {x for x in linears if _inside(x, m)} <= done]
    return min(around, key=len)


def _returns_a_placeholder(returned: list, placeholders: dict[str, list]) -> bool:
    """Whether a module returned, in every call, one of the group's placeholders itself (or a tuple starting
    with it, as attention blocks return (output, weights)): then, once filled, its recorded output is right."""
    ours = {id(p) for outs in placeholders.values() for p in outs}
    return all(id(r[0] if isinstance(r, tuple) else r) in ours for r in returned)


def _run_stage(layer, inputs: LayerInputs, cache: dict, group: dict, tops: set, H: Hessian | None):
    """One pass of every call through the layer for the stage of `group`. Returns (per call: the group's input
    X, or the layer's output when the group is empty; per linear of the group: its placeholder per call; per
    module in `tops`: its output per call).

    What makes it one pass and not one per group:
    - modules in `cache` are not run: the output recorded in an earlier stage is served;
    - the group's linears do not compute: each records its input X (adding it to H once per call, since they
      all read the same tensor) and returns a zero placeholder, filled with the real product once the group is
      quantized; a module built on it (the attention block around o_proj) returns it unchanged, so the
      module's recorded output becomes right too and can be cached;
    - the call stops (StopForward) as soon as every module in `tops` has returned: what follows depends on
      the group's outputs and is computed in later stages.
    """
    call = 0
    X, results = [], []
    placeholders = {name: [] for name in group}
    returned = {top: [] for top in tops}
    modules = dict(layer.named_modules())

    def placeholder(name, linear):
        def forward(x):
            if len(X) == call:  # the first of the group's linears in this call
                X.append(x)
                H.add_batch(x)
            elif x is not X[call]:
                raise RuntimeError(f"{name} does not read the same tensor as the rest of {list(group)}")
            out = x.new_zeros(*x.shape[:-1], linear.out_features)
            placeholders[name].append(out)
            return out

        return forward

    def record(top):
        def hook(module, args, output):
            returned[top].append(output)
            if all(len(r) == call + 1 for r in returned.values()):
                raise StopForward

        return hook

    forwards = {modules[m]: (lambda *a, m=m, **k: cache[m][call]) for m in cache}
    forwards.update({linear: placeholder(name, linear) for name, linear in group.items()})
    handles = [modules[top].register_forward_hook(record(top)) for top in tops]
    try:
        with forwards_replaced(forwards):
            for call, (h, kw) in enumerate(zip(inputs.hidden, inputs.kwargs)):  # noqa: B007 (read above)
                try:
                    out = layer(h, **kw)
                    results.append(out[0] if isinstance(out, tuple) else out)
                except StopForward:
                    pass
    finally:
        for handle in handles:
            handle.remove()
    n_calls = len(inputs.hidden)
    if group and any(len(v) != n_calls for v in (X, *placeholders.values(), *returned.values())):
        raise RuntimeError(f"{list(group)}: expected each to run once per forward call of the layer")
    return (X if group else results), placeholders, returned
