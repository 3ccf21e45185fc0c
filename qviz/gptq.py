"""GPTQ: quantize a layer's weight one column at a time, pushing each column's error onto the columns not yet
quantized, so that the layer's *output* error ‖WX − QX‖² stays small (Frantar et al. 2022, Algorithm 1).

Symbols (paper -> variable):

    X      (in_features, tokens)        calibration inputs of one linear
    H      (in_features, in_features)   2·XXᵀ / tokens, the Hessian of ‖WX − QX‖² w.r.t. one row of W
    Hinv   (in_features, in_features)   upper Cholesky factor of (H + λI)⁻¹ (its rows give the updates)
    W, Q   (out_features, in_features)  weight being updated / its quantized (dequantized) columns
    Err    (out_features, in_features)  scaled errors (w − q) / Hinv[i, i], one column per step
    B      block_size                   columns per lazy batch (128)

Algorithm 1, as `gptq_quantize` runs it (columns in processing order):

    for i1 in 0, B, 2B, ...:                               # one block of B columns at a time
        for i in i1 .. i1+B−1:
            q = quant(W[:, i])                             # `qviz.quant.round_to_grid`, the one rounding step
            Err[:, i] = (W[:, i] − q) / Hinv[i, i]
            W[:, i:i1+B] −= Err[:, i] ⊗ Hinv[i, i:i1+B]    # update the rest of the block now
        W[:, i1+B:] −= Err[:, i1:i1+B] @ Hinv[i1:i1+B, i1+B:]   # the lazy batch update: one product

Act-order processes the columns by descending diag(H): the inputs that fire most are quantized first, while
many columns are left to absorb their error. Groups: with `static_groups` (the default, llm-compressor's
"static" act-order), group k holds the ORIGINAL columns [k·g, (k+1)·g) and its (scale, zero_point) is chosen
up front from the original W, so a packed checkpoint keeps contiguous groups for the kernels. Without it (the
reference's default), a group is g consecutive columns in PROCESSING order, its qparams chosen from the
error-compensated weights when its first column is reached; with act-order its columns are then scattered,
and `g_idx[col]` (stored in checkpoints) says which group each input column belongs to.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .calib.driver import AllGroupsAtOnce, quantize_layerwise
from .calib.report import linear_report, relative_output_error
from .quant import QuantizedTensor, QuantSpec, check_tensor, choose_qparams, fake_quantize, round_to_grid
from .result import QuantResult

__all__ = ["GPTQ", "GPTQResult", "gptq_quantize", "layer_output_errors", "quantize_model"]

MAX_DAMP_TRIES = 6  # damping grows 10x per failed Cholesky: 0.01 -> 0.1 -> 1 -> ... -> 1e3


@dataclass(frozen=True)
class GPTQResult:
    """What `gptq_quantize` returns. Column-indexed tensors are in the ORIGINAL column order."""

    Q: torch.Tensor  # (out_features, in_features) dequantized weight, dtype of the input W
    codes: torch.Tensor  # (out_features, in_features) int32 codes in [spec.qmin, spec.qmax]
    scale: torch.Tensor  # (out_features, n_groups) float32 (n_groups 1 per-channel; (1, 1) per-tensor)
    zero_point: torch.Tensor  # (out_features, n_groups) int32
    spec: QuantSpec
    g_idx: torch.Tensor  # (in_features,) group of each column (col // group_size unless act-order w/o static)
    perm: torch.Tensor  # (in_features,) processing order: perm[k] is the k-th column quantized
    losses: torch.Tensor  # (in_features,) Σ_rows (w − q)² / Hinv[i, i]² / 2 per column: the paper's Losses
    loss: float  # Losses summed: ½·tr((W − Q)(H + λI)(W − Q)ᵀ) for the damped H
    output_error: float  # ½·tr((W − Q) H (W − Q)ᵀ) = mean over tokens of ‖(W − Q)x‖² (undamped H)
    row_output_error: torch.Tensor  # (out_features,) the same per output row (sums to output_error)
    damp: float  # relative damping finally used: λ = damp · mean(diag H)
    trace: torch.Tensor | None = None  # (in_features + 1, trace_rows, in_features): rows 0.. after each step

    def quantized_tensor(self) -> QuantizedTensor:
        """The codes and qparams as a `qviz.quant.QuantizedTensor` (with g_idx only when the groups are not
        contiguous); `dequantize` of it equals Q."""
        grouped = self.spec.granularity == "group"
        plain = torch.arange(len(self.g_idx), device=self.g_idx.device) // (self.spec.group_size or 1)
        contiguous = not grouped or torch.equal(self.g_idx, plain)
        g_idx = None if contiguous else self.g_idx.to(torch.int32)
        return QuantizedTensor(self.codes, self.scale, self.zero_point, self.spec, self.Q.dtype, g_idx)


def _inverse_cholesky(H: torch.Tensor, damp: float) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor U of (H + λI)⁻¹ = UᵀU, λ = damp·mean(diag H), never forming an inverse.

    With J the order-reversing permutation, factor J(H + λI)J = LLᵀ; then (H + λI)⁻¹ = (JL⁻ᵀJ)(JL⁻¹J), and
    U = JL⁻¹J is upper triangular with a positive diagonal: the factor the paper asks for, from one Cholesky
    and one triangular inverse (half the work of Cholesky -> inverse -> Cholesky, and more accurate).
    Retries with 10x the damping while the factorization fails.
    """
    mean_diag = torch.diag(H).mean()
    first = damp
    for _ in range(MAX_DAMP_TRIES):
        Hd = H.flip(0, 1)  # a copy: J H J
        Hd.diagonal().add_(damp * mean_diag)
        L, info = torch.linalg.cholesky_ex(Hd)
        if info == 0:
            eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
            Hinv = torch.linalg.solve_triangular(L, eye, upper=False).flip(0, 1)
            if torch.isfinite(Hinv).all():
                if damp != first:
                    warnings.warn(
                        f"GPTQ: Cholesky of H + λI failed at damp={first:g}; used damp={damp:g} instead "
                        f"(λ = damp · mean(diag H))",
                        stacklevel=3,
                    )
                return Hinv, damp
        damp = max(10 * damp, 0.01)
    raise ValueError(f"H + λI is not positive definite even at damp={damp / 10:g}; is H a Hessian 2XXᵀ/n?")


def _check_options(spec, damp, block_size) -> None:
    """The options of `gptq_quantize` and `GPTQ`, checked before any weight is touched."""
    if not isinstance(spec, QuantSpec):
        raise ValueError(f"spec must be a qviz.quant.QuantSpec, got {type(spec).__name__}")
    if isinstance(damp, bool) or not (isinstance(damp, (int, float)) and 0 <= damp < float("inf")):
        raise ValueError(f"damp must be a finite number >= 0 (e.g. 0.01), got {damp!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer (e.g. 128), got {block_size!r}")


def _check(W: torch.Tensor, H: torch.Tensor, spec: QuantSpec, damp, block_size, trace_rows):
    _check_options(spec, damp, block_size)
    check_tensor(W, spec)
    if W.dim() != 2:
        raise ValueError(f"W must be (out_features, in_features), got shape {tuple(W.shape)}")
    if not isinstance(H, torch.Tensor) or H.shape != (W.shape[1], W.shape[1]):
        shape = tuple(H.shape) if isinstance(H, torch.Tensor) else type(H).__name__
        raise ValueError(
            f"H must be ({W.shape[1]}, {W.shape[1]}) for W of shape {tuple(W.shape)}, got {shape}"
        )
    if not torch.isfinite(H).all():
        raise ValueError("H has NaN or Inf values")
    if not torch.diag(H).any():
        raise ValueError("H is all zeros on its diagonal: no calibration tokens reached this layer")
    if isinstance(trace_rows, bool) or not isinstance(trace_rows, int) or trace_rows < 0:
        raise ValueError(f"trace_rows must be an integer >= 0, got {trace_rows!r}")


def gptq_quantize(
    W: torch.Tensor,
    H: torch.Tensor,
    spec: QuantSpec,
    *,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = True,
    static_groups: bool = True,
    trace_rows: int = 0,
) -> GPTQResult:
    """GPTQ (Algorithm 1 of Frantar et al. 2022) on one weight. W: (out_features, in_features), H: (in, in).

    Dead inputs (H[i, i] == 0: the input never fires) get H[i, i] = 1 and W[:, i] = 0. `damp` adds
    λ = damp · mean(diag H) to the diagonal (retried 10x larger, with a warning, if Cholesky fails).
    `act_order`: columns by descending diag(H); `static_groups`: group qparams from the original W, in
    contiguous groups (see the module docstring; both only matter with groups, the second only with the
    first). `trace_rows` > 0 records the first rows of the evolving W after every column (for plots on small
    layers; computed after the loop from Err, at no cost to it). Runs in float64 when H is float64, else
    float32; the grid is `qviz.quant`'s.
    """
    _check(W, H, spec, damp, block_size, trace_rows)
    dtype = torch.float64 if H.dtype == torch.float64 else torch.float32
    W0, H = W.detach(), H.detach().to(dtype).clone()
    W = W0.to(dtype=dtype, device=H.device).clone()
    rows, columns = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    perm = (
        torch.argsort(torch.diag(H), descending=True, stable=True)
        if act_order
        else torch.arange(columns, device=W.device)
    )
    invperm = torch.argsort(perm)
    group_size = spec.group_size if spec.granularity == "group" else columns
    dynamic = spec.granularity == "group" and not static_groups  # qparams chosen inside the loop
    if dynamic:  # g consecutive columns in processing order form a group; qparams chosen in the loop
        scale = torch.ones(rows, columns // group_size, device=W.device)
        zero_point = torch.zeros(rows, columns // group_size, dtype=torch.int32, device=W.device)
        group_at = torch.arange(columns, device=W.device) // group_size  # group of processing position k
    else:  # one choice up front, from the (dead-zeroed) original W: per row, per tensor or per original group
        scale, zero_point = choose_qparams(W, spec)  # (rows, n_groups); per-tensor (1, 1), broadcast
        group_at = (perm // group_size) if spec.granularity == "group" else torch.zeros_like(perm)
    g_idx = group_at[invperm]
    # Each column's scale and zero point, (in, out) in processing order, in float32 like every rounding in
    # qviz.quant (dynamic groups: filled in by the loop).
    S, Z = scale[:, group_at].T.contiguous(), zero_point[:, group_at].T.float().contiguous()

    W, H = W[:, perm], H[perm][:, perm]  # copies: the loop updates W in place
    W_start = W[:trace_rows].clone()
    Hinv, damp = _inverse_cholesky(H, damp)
    codes, Err = _column_loop(W, Hinv, spec, S, Z, dynamic, group_size, block_size)
    if dynamic:  # the qparams the loop chose: those of each group's first column
        firsts = torch.arange(0, columns, group_size, device=W.device)
        scale, zero_point = S[firsts].T, Z[firsts].T.to(torch.int32)

    Q = ((codes - Z.T) * S.T).to(dtype)  # dequantize, as qviz.quant does: in float32
    trace = _trace(W_start, Q[:trace_rows], Err[:trace_rows], Hinv)[..., invperm] if trace_rows else None
    Q, codes, Err = Q[:, invperm], codes[:, invperm], Err[:, invperm]
    Losses = Err.pow(2) / 2  # (w − q)² / Hinv[i, i]² / 2
    # The output error comes free from the losses. GPTQ leaves W − Q = Err·Hinv (each column's error is the
    # sum of the updates it received), so ½·tr((W − Q)(H + λI)(W − Q)ᵀ) = ½‖Err‖² = ΣLosses, exactly; take
    # away the damping term ½λ‖W − Q‖² to get the undamped ½·tr((W − Q) H (W − Q)ᵀ), row by row. (Dead
    # columns: there W − Q counts as 0 and H is 0, so they add nothing either way.)
    lam = damp * torch.diag(H).mean().item()
    D = torch.where(dead, 0.0, W0.to(dtype=dtype, device=Q.device)) - Q
    row_output_error = Losses.sum(1) - 0.5 * lam * D.pow(2).sum(1)
    return GPTQResult(
        Q=Q.to(dtype=W0.dtype),
        codes=codes.to(torch.int32),
        scale=scale.float(),
        zero_point=zero_point.to(torch.int32),
        spec=spec,
        g_idx=g_idx,
        perm=perm,
        losses=Losses.sum(0),
        loss=Losses.sum().item(),
        output_error=row_output_error.sum().item(),
        row_output_error=row_output_error,
        damp=damp,
        trace=trace,
    )


def _column_loop(W, Hinv, spec, S, Z, dynamic, group_size, block_size):
    """Algorithm 1's loop over the columns of W (out, in), already in processing order, with Hinv the upper
    Cholesky factor of (H + λI)⁻¹ in the same order and S, Z (in, out) each column's scale and zero point
    (float32). Returns (codes as float32, Err), both (out, in) in processing order.

    With `dynamic` groups, S and Z of a group's columns are filled in when its first column is reached, from
    the up-to-date values of its columns. Each block's columns are taken apart once (W1.unbind) instead of
    indexed one by one: the loop body runs once per column of every weight in the model.
    """
    columns = W.shape[1]
    qmin, qmax = spec.qmin, spec.qmax
    codes, Err = torch.empty_like(W, dtype=torch.float32), torch.empty_like(W)
    d = torch.diag(Hinv).tolist()
    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        W1 = W[:, i1:i2].T.contiguous().T  # column-major: each column W1[:, i] is contiguous
        Hinv1 = Hinv[i1:i2, i1:i2]
        C1, Err1 = [], []  # the block's codes and scaled errors, column by column
        for i, (w, h) in enumerate(zip(W1.unbind(1), Hinv1.unbind(0))):
            k = i1 + i  # processing position
            if dynamic and k % group_size == 0:  # a new group: its qparams from its columns as they are now
                scale, zero_point = choose_qparams(
                    _up_to_date(W, W1, Err1, Hinv, i1, i2, k, k + group_size), spec
                )
                S[k : k + group_size], Z[k : k + group_size] = scale.T, zero_point.T
            s, z = S[k], Z[k]
            c = round_to_grid(w.float(), s, z, qmin, qmax)  # in float32, as qviz.quant rounds
            q = ((c - z) * s).to(w.dtype)
            err = (w - q) / d[k]  # (w − q) / Hinv[k, k]
            W1[:, i:].addr_(err, h[i:], alpha=-1)  # W1[:, i:] −= err ⊗ Hinv[k, k:i2]
            C1.append(c)
            Err1.append(err)
        Err1 = torch.stack(Err1, dim=1)
        codes[:, i1:i2], Err[:, i1:i2] = torch.stack(C1, dim=1), Err1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]  # the lazy batch update
    return codes, Err


def _up_to_date(W, W1, Err1: list, Hinv, i1: int, i2: int, start: int, stop: int) -> torch.Tensor:
    """Current values of the columns at processing positions [start, stop): those inside the block from W1,
    those after it from W minus the block's pending lazy update (errors so far @ Hinv[i1:k, ...])."""
    inside = W1[:, start - i1 : min(stop, i2) - i1]
    if stop <= i2:
        return inside
    after = W[:, i2:stop]
    if Err1:
        after = after - torch.stack(Err1, dim=1) @ Hinv[i1 : i1 + len(Err1), i2:stop]
    return torch.cat([inside, after], dim=1)


def _trace(W: torch.Tensor, Q: torch.Tensor, Err: torch.Tensor, Hinv: torch.Tensor) -> torch.Tensor:
    """The first rows of W after every step, replayed from the errors (processing order): after t steps,
    columns < t hold Q and column j >= t holds W[:, j] − Σ_{i<t} Err[:, i]·Hinv[i, j] (the updates it has
    received so far, in-block and lazy alike). W, Q, Err: (r, n) -> (n + 1, r, n)."""
    updates = Err.T[:, :, None] * Hinv[:, None, :]  # (n, r, n): step i's update of every column
    states = W - torch.cat([torch.zeros_like(updates[:1]), updates.cumsum(0)])  # (n + 1, r, n)
    done = torch.arange(W.shape[1] + 1)[:, None] > torch.arange(W.shape[1])[None, :]  # (n + 1, n)
    return torch.where(done[:, None, :], Q[None], states)


def layer_output_errors(
    W: torch.Tensor, H: torch.Tensor, spec: QuantSpec, *, damp=0.01, block_size=128, act_order=True,
    static_groups=True,
) -> dict:  # fmt: skip
    """Relative output error ‖WX − QX‖² / ‖WX‖² of GPTQ and of RTN for one weight W (out, in) under `spec`,
    with H (in, in) the Hessian of its calibration inputs; also the damping GPTQ finally used."""
    r = gptq_quantize(
        W, H, spec, damp=damp, block_size=block_size, act_order=act_order, static_groups=static_groups
    )
    return dict(
        gptq=relative_output_error(W, r.Q, H, r.output_error),
        rtn=relative_output_error(W, fake_quantize(W, spec), H),
        damp=r.damp,
    )


@dataclass(frozen=True)
class GPTQ:
    """GPTQ as a `qviz.calib.driver.GroupMethod` (options as in `gptq_quantize`).

    The driver quantizes each layer's groups of linears in forward order (q/k/v, o, gate/up, down for Llama),
    each with H from the inputs it receives once the groups before it are quantized: the reference's
    "true sequential" order (`qviz.calib.sequential.quantize_sequential`). `AllGroupsAtOnce(GPTQ(...))` takes
    every H from the float layer instead (`quantize_model(..., true_sequential=False)`).
    """

    spec: QuantSpec
    damp: float = 0.01  # λ = damp · mean(diag H)
    block_size: int = 128  # columns per lazy batch
    act_order: bool = True  # columns by descending diag(H)
    static_groups: bool = True  # group qparams from the original W, contiguous groups
    name: ClassVar[str] = "gptq"

    def __post_init__(self):
        _check_options(self.spec, self.damp, self.block_size)

    @property
    def options(self) -> dict:
        return dict(
            damp=self.damp,
            block_size=self.block_size,
            act_order=self.act_order,
            static_groups=self.static_groups,
        )

    def quantize_group(
        self, linears: dict[str, nn.Linear], H: torch.Tensor
    ) -> tuple[list[dict], dict[str, QuantizedTensor]]:
        """Quantize linears that all read the input whose H is given, in place; a report row and the
        QuantizedTensor of each.

        GPTQ treats rows independently, so they are quantized as one stacked weight: same result, one
        Cholesky and one column loop. Not per-tensor: there the single scale would be shared across the stack.
        """
        names = list(linears)
        stacks = [names] if self.spec.granularity != "tensor" else [[name] for name in names]
        rows, quantized = [], {}
        for names in stacks:
            weights = [linears[name].weight.data for name in names]
            r = gptq_quantize(torch.cat(weights), H, self.spec, **self.options)
            qt = r.quantized_tensor()
            sizes = [w.shape[0] for w in weights]
            parts = zip(
                names, weights, r.Q.split(sizes), r.row_output_error.split(sizes), qt.codes.split(sizes),
                qt.scale.split(sizes) if qt.scale.shape[0] > 1 else [qt.scale] * len(names),
                qt.zero_point.split(sizes) if qt.zero_point.shape[0] > 1 else [qt.zero_point] * len(names),
            )  # fmt: skip
            for name, W, Q, err, codes, scale, zero_point in parts:
                row = linear_report(name, W, Q, H, Q_rtn=fake_quantize(W, self.spec), err=err.sum().item())
                row["damp"] = r.damp
                g_idx = None if qt.g_idx is None else qt.g_idx.clone()  # one each: the stack shares one
                quantized[name] = QuantizedTensor(codes, scale, zero_point, self.spec, W.dtype, g_idx)
                W.copy_(Q)
                rows.append(row)
        return rows, quantized


def quantize_model(
    model: nn.Module,
    spec: QuantSpec,
    windows,
    *,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = True,
    static_groups: bool = True,
    true_sequential: bool = True,
    n_layers: int | None = None,
    batch_size: int = 8,
    bos_token_id: int | str | None = "auto",
    progress: bool = True,
) -> QuantResult:
    """GPTQ on every linear inside the decoder layers of `model` (the first `n_layers`), in place (embeddings
    and lm_head stay in float). The defaults are the shipped tools': act-order with static groups.

    windows: (n, seq) calibration token ids, each prefixed with BOS by default (`bos_token_id`, as in
    `qviz.calib.capture.capture_layer_inputs`). true_sequential: inside each layer, each group of linears gets
    H from the inputs the already-quantized groups before it produce (one pass of the layer); False: all from
    one pass of the float layer (`qviz.calib.driver.AllGroupsAtOnce`, two passes). Returns a `QuantResult`
    whose rows (see `qviz.calib.report.linear_report`) also hold "rtn_output_rel_error" (plain rounding on
    the same inputs) and "damp" (the damping used).
    """
    method = GPTQ(spec, damp, block_size, act_order, static_groups)  # validates the options
    if windows is None:
        raise ValueError("GPTQ needs calibration windows (n, seq) of token ids, e.g. qviz.data.calib_windows")
    result = quantize_layerwise(
        model,
        method if true_sequential else AllGroupsAtOnce(method),
        windows,
        n_layers=n_layers,
        batch_size=batch_size,
        bos_token_id=bos_token_id,
        progress=progress,
    )
    result.options["true_sequential"] = true_sequential
    return result
