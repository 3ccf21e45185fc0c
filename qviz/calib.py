"""Calibration: capture what each decoder layer (and each linear in it) sees, and the layer-by-layer driver
that RTN, GPTQ and AWQ share.

The driver never holds more than one decoder layer's activations:

    windows (n, seq) --embeddings--> inputs of layer 0 (+ the keyword arguments every layer receives)
    for each layer ℓ:
        method.quantize_layer(layer ℓ, inputs, family)   # run layer ℓ with hooks, quantize its linears in place
        inputs <- layer ℓ(inputs)                        # recomputed by the QUANTIZED layer: layer ℓ+1 is then
                                                         # calibrated on what it will really receive

Capturing layer 0's inputs uses the standard trick: replace every decoder layer's `forward` by a recorder
that stores its arguments, and raise an exception in the last one so the rest of the model (final norm,
lm_head) never runs. Recording every layer's keyword arguments matters: models such as Gemma 3 pass
different attention masks and rotary embeddings to sliding-window and full-attention layers.

A method is either a `LayerMethod`, with

    quantize_layer(layer: nn.Module, inputs: LayerInputs, family: ArchFamily) -> list[dict]

(AWQ, RTN: the whole layer at once, as above), or a `GroupMethod`, with

    quantize_group(linears: dict[str, nn.Linear], H: torch.Tensor) -> list[dict]

(GPTQ: one group of linears reading the same input, e.g. q/k/v, given H = 2XXᵀ/n of that input). For a
GroupMethod the driver runs the layer's groups in order with `quantize_sequential`, which also yields the
layer's outputs; `AllGroupsAtOnce(method)` instead takes every group's H from the float layer. Both return one plain dict per linear (at least {"linear": "self_attn.q_proj", ...}); the
driver adds "layer".

What methods measure with: `Hessian` (H = 2XXᵀ/n of a linear's inputs, a running average; GPTQ's H),
`collect_hessians` (one per linear, shared by linears that read the same tensor), `output_error`
(½·tr((W − Q) H (W − Q)ᵀ) = mean ‖(W − Q)x‖² over tokens, without storing X) and `linear_report` (one row).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from .arch import ArchFamily, decoder_layers, family_of, input_groups, linear_layers
from .quant import QuantSpec, check_tensor, mse, sqnr_db

__all__ = [
    "Hessian",
    "HessianSet",
    "LayerInputs",
    "GroupMethod",
    "LayerMethod",
    "capture_layer_inputs",
    "capture_linear_inputs",
    "check_spec",
    "collect_hessians",
    "linear_report",
    "output_error",
    "quantize_layerwise",
    "quantize_sequential",
    "run_layer",
]


class Hessian:
    """Running average H = 2/n · Σ x xᵀ over calibration tokens, in float32 (or float64 if asked).

    >>> h = Hessian(2)
    >>> h.add_batch(torch.tensor([[1.0, 0.0], [1.0, 2.0]]))  # 2 tokens: H = 2/2 · (x1x1ᵀ + x2x2ᵀ)
    >>> h.H.tolist()
    [[2.0, 2.0], [2.0, 4.0]]
    """

    def __init__(self, in_features: int, dtype: torch.dtype = torch.float32):
        if in_features < 1:
            raise ValueError(f"in_features must be positive, got {in_features}")
        self.in_features = in_features
        self.dtype = dtype
        self.n_tokens = 0
        self._H: torch.Tensor | None = None

    def add_batch(self, X: torch.Tensor) -> None:
        """X: (tokens, in_features) or (..., in_features), e.g. a linear's input (batch, seq, in_features)."""
        if X.shape[-1] != self.in_features:
            raise ValueError(f"X has {X.shape[-1]} features, this Hessian expects {self.in_features}")
        X = X.reshape(-1, self.in_features).to(self.dtype)
        n = X.shape[0]
        if n == 0:
            raise ValueError("add_batch got no tokens")
        XtX = _gram(X)
        # A NaN or Inf in X reaches diag(XᵀX) = Σ x², so checking its n diagonal entries checks every value of
        # X (far cheaper than a pass over X; an |x| > 1e19, whose square overflows, is refused too).
        if not torch.isfinite(torch.diagonal(XtX)).all():
            raise ValueError("X has NaN or Inf values: calibration inputs must be finite")
        if self._H is None:
            self._H = torch.zeros_like(XtX)
        old = self.n_tokens
        self.n_tokens += n
        self._H.mul_(old / self.n_tokens).add_(XtX, alpha=2 / self.n_tokens)  # running average of 2xxᵀ

    @property
    def H(self) -> torch.Tensor:
        if self._H is None:
            raise ValueError("no calibration tokens were added: call add_batch(X) first")
        return self._H


def _gram(X: torch.Tensor, blocks: int = 3) -> torch.Tensor:
    """XᵀX for X (tokens, n). It is symmetric, so for n >= 512 only the blocks on and above the diagonal are
    multiplied (6 of 9) and the others are their transposes: a third less work than one product."""
    n = X.shape[1]
    if n < 512:
        return X.T @ X
    G = torch.empty(n, n, dtype=X.dtype, device=X.device)
    edges = [n * i // blocks for i in range(blocks + 1)]
    for i in range(blocks):
        a = slice(edges[i], edges[i + 1])
        for j in range(i, blocks):
            b = slice(edges[j], edges[j + 1])
            G[a, b] = X[:, a].T @ X[:, b]
            if j != i:
                G[b, a] = G[a, b].T
    return G


def output_error(W: torch.Tensor, Q: torch.Tensor, H: torch.Tensor) -> float:
    """½·tr((W − Q) H (W − Q)ᵀ): with H = 2XXᵀ/n, the mean over the n tokens of ‖(W − Q)x‖²."""
    D = (W.to(H.dtype) - Q.to(H.dtype)).to(H.device)
    return 0.5 * ((D @ H) * D).sum().item()


@dataclass
class LayerInputs:
    """The calibration inputs of one decoder layer, one entry per forward call (a batch of windows)."""

    hidden: list[torch.Tensor]  # hidden_states per call: (batch, seq, hidden_size)
    kwargs: list[dict]  # the layer's keyword arguments per call: attention_mask, position_embeddings, ...

    @property
    def n_tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)


class LayerMethod(Protocol):
    """Quantizes a whole decoder layer at once (AWQ); the driver then recomputes the layer's outputs."""

    def quantize_layer(self, layer: nn.Module, inputs: LayerInputs, family: ArchFamily) -> list[dict]: ...


class GroupMethod(Protocol):
    """Quantizes one group of linears that read the same input, given H = 2XXᵀ/n of that input (GPTQ); the
    driver runs the groups in `quantize_sequential` order."""

    def quantize_group(self, linears: dict[str, nn.Linear], H: torch.Tensor) -> list[dict]: ...


class _StopForward(Exception):
    """Raised by the last recorder: everything after the decoder layers is skipped."""


def _as_windows(windows) -> torch.Tensor:
    """(n, seq) LongTensor from a tensor (n, seq) or (seq,), or a list of equal-length 1-D tensors."""
    if isinstance(windows, (list, tuple)):
        if not windows:
            raise ValueError("no calibration windows: pass an (n, seq) tensor of token ids")
        windows = torch.stack([torch.as_tensor(w) for w in windows])
    if not isinstance(windows, torch.Tensor) or windows.dtype not in (torch.long, torch.int32, torch.int64):
        raise ValueError("calibration windows must be an integer tensor of token ids, shape (n, seq)")
    windows = windows.unsqueeze(0) if windows.dim() == 1 else windows
    if windows.dim() != 2 or windows.numel() == 0:
        raise ValueError(
            f"calibration windows must have shape (n, seq) with n, seq >= 1, got {tuple(windows.shape)}"
        )
    return windows.long()


@torch.no_grad()
def capture_layer_inputs(
    model: nn.Module, windows, *, batch_size: int = 8, bos_token_id: int | str | None = "auto"
) -> tuple[LayerInputs, list[list[dict]]]:
    """Run `windows` (n, seq) up to the first decoder layer.

    bos_token_id: prepended to every window; "auto" (default) takes `model.config.bos_token_id` when there is
    one, as `qviz.eval` does, so the model is calibrated in the regime it is evaluated in; None: raw windows.
    Returns (inputs of layer 0, kwargs[ℓ][call]: the keyword arguments layer ℓ receives for each call).
    """
    windows = _as_windows(windows)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if bos_token_id == "auto":
        bos_token_id = getattr(model.config, "bos_token_id", None)
    if bos_token_id is not None:
        if not isinstance(bos_token_id, int):
            raise ValueError(f"bos_token_id must be an int, 'auto' or None, got {bos_token_id!r}")
        windows = torch.cat([torch.full_like(windows[:, :1], bos_token_id), windows], dim=1)
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
                raise _StopForward
            return h

        return forward

    with _forwards_replaced({layer: recorder(index) for index, layer in enumerate(layers)}):
        for batch in windows.split(batch_size):
            try:
                model(input_ids=batch.to(device), use_cache=False)
            except _StopForward:
                pass
    return LayerInputs(hidden, kwargs[0]), kwargs


@contextmanager
def _forwards_replaced(forwards: dict[nn.Module, Callable]):
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
    """Run the layer on `inputs` and call fn(name, X) with each linear's input X: (tokens, in_features)
    (a view of the tensor the linear reads: do not modify it).

    Returns the layer's outputs (from the weights as they are now). outputs=False returns [] and stops each
    call as soon as every linear has shown its input: the rest of the layer (at least the last linear's
    product, e.g. down_proj's) is never computed.
    """
    seen: set[str] = set()

    def hook(name):
        def pre_hook(module, args):
            fn(name, args[0].reshape(-1, args[0].shape[-1]))
            seen.add(name)
            if not outputs and len(seen) == len(linears):
                raise _StopForward

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
                except _StopForward:
                    pass
        return []
    finally:
        for handle in handles:
            handle.remove()


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
) -> list[dict]:
    """Quantize `model` in place, one decoder layer at a time, with `method`; returns its per-linear rows.

    windows: (n, seq) token ids (e.g. `qviz.data.calib_windows(tok, n=128, seqlen=512)`), run in batches of
    `batch_size` windows, each prefixed with BOS (see `capture_layer_inputs`). Each row is the method's dict
    for one linear, plus "layer": the layer index. n_layers: quantize only the first n decoder layers and
    leave the rest in float (quick experiments); None: all of them.
    """
    n_total = len(decoder_layers(model))
    if n_layers is not None and (
        isinstance(n_layers, bool) or not isinstance(n_layers, int) or not 1 <= n_layers <= n_total
    ):
        raise ValueError(
            f"n_layers must be an integer from 1 to {n_total} (this model's decoder layers), or None; got {n_layers!r}"
        )
    family = family_of(model)
    was_training = model.training
    model.eval()
    try:
        inputs, kwargs = capture_layer_inputs(
            model, windows, batch_size=batch_size, bos_token_id=bos_token_id
        )
        rows = []
        layers = decoder_layers(model)[:n_layers]
        for index, layer in enumerate(
            tqdm(layers, desc=f"quantize {type(method).__name__}", disable=not progress)
        ):
            inputs = LayerInputs(inputs.hidden, kwargs[index])
            last = index + 1 == len(layers)  # its outputs feed nothing that is quantized: not computed
            if hasattr(method, "quantize_group"):
                layer_rows, outputs = quantize_sequential(
                    layer, input_groups(layer, family), inputs, method.quantize_group, outputs=not last
                )
            else:
                layer_rows = method.quantize_layer(layer, inputs, family)
                outputs = [] if last else run_layer(layer, inputs)
            rows += [{"layer": index, **row} for row in layer_rows]
            inputs = LayerInputs(outputs, kwargs[index])
    finally:
        model.train(was_training)
    return rows


@torch.no_grad()
def quantize_sequential(
    layer: nn.Module,
    groups: list[dict[str, nn.Linear]],
    inputs: LayerInputs,
    quantize_group: Callable[[dict[str, nn.Linear], torch.Tensor], list[dict]],
    *,
    outputs: bool = True,
) -> tuple[list[dict], list[torch.Tensor]]:
    """Quantize one layer's linears group after group, in forward order ("true sequential", as the GPTQ
    reference's --true-sequential): each group gets H = 2XXᵀ/n of the inputs it receives once every group
    before it is quantized, so o_proj is calibrated on what the quantized q/k/v really produce.

    groups: linears reading one tensor each, in forward order (`qviz.arch.input_groups`). quantize_group(group,
    H) quantizes a group in place and returns its report rows. Returns (rows of all groups, the layer's
    outputs; [] with outputs=False).

    One stage per group, and nothing computed twice. Stage k runs every call of `inputs` with the modules
    finished earlier served from a cache; the group's linears record their input X (H accumulates) and return
    empty placeholders; the call stops once the largest submodule the group completes has returned (for
    q/k/v the linears themselves, for o_proj the attention block, for down_proj the MLP). After quantizing,
    each placeholder is filled in place with the real product, which makes the recorded submodule outputs
    right, and they are cached. So every linear's product and the attention run once per call, as in one
    forward pass. A submodule whose output is not its last linear's output (as a view) is not cached but
    recomputed (eager attention also returns its weights). The cost is memory: one layer's cached outputs,
    for SmolLM2 about 5,800 floats per token at the peak (the down_proj stage), ten times its hidden state.
    """
    modules = dict(layer.named_modules())
    names = [name for group in groups for name in group]
    inside = {  # submodule -> the linears inside it (for a linear, itself)
        m: {name for name in names if name == m or name.startswith(m + ".")} for m in modules if m
    }
    inside = {m: lins for m, lins in inside.items() if lins}
    cache: dict[str, list] = {}  # submodule -> its output per call, served instead of running it
    done: set[str] = set()
    rows: list[dict] = []
    n_calls = len(inputs.hidden)

    def run(stage_forwards: dict, stage_hooks: dict) -> list[torch.Tensor]:
        """Every call through the layer with the cached submodules served; the outputs of calls not stopped."""
        call = 0
        served = {modules[m]: (lambda *a, m=m, **k: cache[m][call]) for m in cache}
        handles = [modules[m].register_forward_hook(hook) for m, hook in stage_hooks.items()]
        results = []
        try:
            with _forwards_replaced({**served, **stage_forwards}):
                for call, (h, kw) in enumerate(zip(inputs.hidden, inputs.kwargs)):  # noqa: B007 (read by served)
                    try:
                        out = layer(h, **kw)
                        results.append(out[0] if isinstance(out, tuple) else out)
                    except _StopForward:
                        pass
        finally:
            for handle in handles:
                handle.remove()
        return results

    for index, group in enumerate(groups):
        done |= set(group)
        # The outermost submodule around each linear of the group whose linears are now all done.
        tops = {
            min((m for m, lins in inside.items() if name in lins and lins <= done), key=len) for name in group
        }
        H = Hessian(next(iter(group.values())).in_features)
        seen: dict[str, list] = {name: [] for name in group}  # per call: (X as received, placeholder output)
        returned: dict[str, list] = {m: [] for m in tops}  # per call: the submodule's output

        def placeholder(name, linear, group=group, seen=seen, H=H):
            def forward(x):
                ahead = [n for n in group if len(seen[n]) > len(seen[name])]  # already saw this call's input
                if not ahead:
                    H.add_batch(x)  # once per call: the group's linears all read this same tensor
                elif x.data_ptr() != seen[ahead[0]][-1][0].data_ptr():
                    raise RuntimeError(f"{name} does not read the same tensor as {ahead[0]}: not one group")
                out = x.new_empty(*x.shape[:-1], linear.out_features)  # filled after quantizing
                seen[name].append((x, out))
                return out

            return forward

        def record(m, returned=returned):
            def hook(module, args, output):
                returned[m].append(output)
                if all(len(r) == len(returned[m]) for r in returned.values()):
                    raise _StopForward  # the rest of the call is computed in later stages

            return hook

        run(
            {linear: placeholder(name, linear) for name, linear in group.items()},
            {m: record(m) for m in tops},
        )
        if any(len(v) != n_calls for v in (*seen.values(), *returned.values())):
            raise RuntimeError(f"{list(group)}: expected each to run once per forward call of the layer")
        rows += quantize_group(group, H.H)
        if index + 1 == len(groups) and not outputs:
            break
        for name, linear in group.items():  # the real products, into the placeholders (and what views them)
            for X, out in seen[name]:
                out.copy_(linear(X))
        placeholders = {out.untyped_storage().data_ptr() for v in seen.values() for _, out in v}
        for m in tops:
            if all(_views_of(result, placeholders) for result in returned[m]):
                cache[m] = returned[m]
            else:  # something computed after a placeholder: cache the linears only, recompute the submodule
                for name in inside[m] & set(group):
                    cache[name] = [out for _, out in seen[name]]
        for m in list(cache):  # a cached submodule is never run again: the caches inside it are not read
            if any(m.startswith(outer + ".") for outer in cache):
                del cache[m]
    return rows, (run({}, {}) if outputs else [])


def _views_of(output, storages: set[int]) -> bool:
    """Whether a module's output (a tensor, or a tuple/list of tensors and None) holds at least one tensor and
    only tensors living in `storages` (views of the placeholders)."""
    items = output if isinstance(output, (tuple, list)) else (output,)
    tensors = [t for t in items if isinstance(t, torch.Tensor)]
    return (
        bool(tensors)
        and all(t is None or isinstance(t, torch.Tensor) for t in items)
        and all(t.untyped_storage().data_ptr() in storages for t in tensors)
    )


@dataclass(frozen=True)
class AllGroupsAtOnce:
    """A `GroupMethod` run as a `LayerMethod`: every group's H comes from ONE pass of the layer as it stands,
    before any of its linears is quantized (the GPTQ reference without --true-sequential), then the groups
    are quantized in order. Costs one more pass of the layer than `quantize_sequential`."""

    method: GroupMethod

    def quantize_layer(self, layer: nn.Module, inputs: LayerInputs, family: ArchFamily) -> list[dict]:
        hessians = collect_hessians(layer, linear_layers(layer, family), inputs)
        rows = []
        for group in input_groups(layer, family):
            rows += self.method.quantize_group(group, hessians[next(iter(group))].H)
        return rows


class HessianSet:
    """One `Hessian` per linear, filled from the linears' inputs during forward calls of their layer.

    Linears that read the very same tensor in a call (q/k/v after the input norm, gate/up) share ONE Hessian
    object, accumulated once: `hessians["self_attn.q_proj"] is hessians["self_attn.k_proj"]`. Call
    `new_call()` before each forward call and `add(name, X)` from each linear's pre-hook.
    """

    def __init__(self):
        self.hessians: dict[str, Hessian] = {}
        self._seen: dict = {}  # (data_ptr, shape) -> (X kept alive so no tensor reuses its address, Hessian)

    def new_call(self) -> None:
        self._seen = {}

    def add(self, name: str, X: torch.Tensor) -> None:
        key = (X.data_ptr(), tuple(X.shape))
        if key not in self._seen:  # the first linear reading this tensor in this call accumulates it
            self._seen[key] = (X, self.hessians.setdefault(name, Hessian(X.shape[-1])))
            self._seen[key][1].add_batch(X)
        self.hessians.setdefault(name, self._seen[key][1])


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


def linear_report(
    name: str,
    W: torch.Tensor,
    Q: torch.Tensor,
    H: torch.Tensor | None = None,
    Q_rtn: torch.Tensor | None = None,
    err: float | None = None,
) -> dict:
    """One report row for a linear whose weight W (out, in) becomes Q.

    weight_mse, sqnr_db: error of the weights themselves. With H = 2XXᵀ/n of the calibration inputs also
    output_mse = mean over tokens and outputs of ((W − Q)x)², and output_rel_error = ‖WX − QX‖² / ‖WX‖²
    (bias excluded: it cancels in the difference); with Q_rtn (plain rounding) also rtn_output_rel_error.
    `err`: output_error(W, Q, H) when the caller already knows it (GPTQ does, from its losses).
    """
    row = {"linear": name, "shape": tuple(W.shape), "weight_mse": mse(W, Q), "sqnr_db": sqnr_db(W, Q)}
    if H is not None:
        err = output_error(W, Q, H) if err is None else err
        signal = output_error(W, torch.zeros_like(W), H)
        row["output_mse"] = err / W.shape[0]
        row["output_rel_error"] = err / signal if signal > 0 else float("nan")
        if Q_rtn is not None:
            row["rtn_output_rel_error"] = output_error(W, Q_rtn, H) / signal if signal > 0 else float("nan")
    return row


def check_spec(model: nn.Module, spec: QuantSpec) -> None:
    """Raise ValueError (naming the linear) before touching any weight if `spec` cannot quantize one of them,
    e.g. group_size 128 on SmolLM2's in_features 576."""
    family = family_of(model)
    for index, layer in enumerate(decoder_layers(model)):
        for name, linear in linear_layers(layer, family).items():
            try:
                check_tensor(linear.weight, spec)
            except ValueError as err:
                raise ValueError(f"layer {index} {name} {tuple(linear.weight.shape)}: {err}") from None
