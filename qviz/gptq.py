"""GPTQ: quantize a layer's weight one column at a time, pushing each column's error onto the columns not yet
quantized, so that the layer's *output* error ‖WX − QX‖² stays small (Frantar et al. 2022, Algorithm 1).

Symbols (paper -> variable):

    X      (in_features, tokens)        calibration inputs of one linear
    H      (in_features, in_features)   2·XXᵀ / tokens, the Hessian of ‖WX − QX‖² w.r.t. one row of W
    Hinv   (in_features, in_features)   upper Cholesky factor of (H + λI)⁻¹ (rows of it give the updates)
    W, Q   (out_features, in_features)  weight being updated / its quantized (dequantized) columns
    Err    (out_features, block)        scaled errors (w − q) / Hinv[i, i] of one lazy block
    Losses (out_features, in_features)  (w − q)² / Hinv[i, i]² / 2, the increase of the objective per weight

For column i:  q = quant(w_i);  err = (w_i − q) / Hinv[i, i];  W[:, j] −= err · Hinv[i, j] for j > i.
Lazy batches apply the updates inside a block of `block_size` columns at once and push the rest to later
columns with one matrix product, W[:, i2:] −= Err @ Hinv[i1:i2, i2:] (same result, far fewer memory passes).

Groups and act-order: group k always holds the ORIGINAL columns [k·g, (k+1)·g) (so `g_idx = col // g` and
the (out_features, n_groups) qparams of `qviz.quant` dequantize Q directly). Without static groups a group's
(scale, zero_point) is chosen from the error-compensated weights of its columns when the first of them is
reached in processing order (all its columns are still unquantized then); with act-order the columns are
processed in order of descending diag(H), so a group's columns may be reached far apart. `static_groups=True`
chooses every group's qparams up front from the original W instead (the reference's `static_groups`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from .calib import (
    AllGroupsAtOnce,
    Hessian,
    check_spec,
    linear_report,
    output_error,
    quantize_layerwise,
)
from .quant import (
    QuantizedTensor,
    QuantSpec,
    check_tensor,
    choose_qparams,
    fake_quantize,
)

__all__ = ["GPTQ", "GPTQResult", "Hessian", "gptq_quantize", "output_error", "quantize_model"]

MAX_DAMP_TRIES = 6  # damping grows 10x per failed Cholesky: 0.01 -> 0.1 -> 1 -> ... -> 1e3


@dataclass(frozen=True)
class GPTQResult:
    """What `gptq_quantize` returns. Column-indexed tensors are in the ORIGINAL column order."""

    Q: torch.Tensor  # (out_features, in_features) dequantized weight, dtype of the input W
    codes: torch.Tensor  # (out_features, in_features) int32 codes in [spec.qmin, spec.qmax]
    scale: torch.Tensor  # (out_features, n_groups) float32 (n_groups 1 per-channel; (1, 1) per-tensor)
    zero_point: torch.Tensor  # (out_features, n_groups) int32
    spec: QuantSpec
    g_idx: torch.Tensor  # (in_features,) group of each column: col // group_size (zeros without groups)
    perm: torch.Tensor  # (in_features,) processing order: perm[k] is the k-th column quantized
    losses: torch.Tensor  # (in_features,) Σ_rows (w − q)² / Hinv[i, i]² / 2 per column: the paper's Losses
    loss: float  # Losses summed: ½·tr((W − Q)(H + λI)(W − Q)ᵀ) for the damped H
    output_error: float  # ½·tr((W − Q) H (W − Q)ᵀ) = mean over tokens of ‖(W − Q)x‖² (undamped H)
    row_output_error: torch.Tensor  # (out_features,) the same per output row (sums to output_error)
    damp: float  # relative damping finally used: λ = damp · mean(diag H)
    trace: torch.Tensor | None = None  # (in_features + 1, trace_rows, in_features): rows 0.. after each step

    def quantized_tensor(self) -> QuantizedTensor:
        """The codes and qparams as a `qviz.quant.QuantizedTensor`; `dequantize` of it equals Q."""
        return QuantizedTensor(self.codes, self.scale, self.zero_point, self.spec, self.Q.dtype)


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


def _check_options(spec, damp, block_size, static_groups) -> None:
    """The options of `gptq_quantize` and `GPTQ`, checked before any weight is touched."""
    if not isinstance(spec, QuantSpec):
        raise ValueError(f"spec must be a qviz.quant.QuantSpec, got {type(spec).__name__}")
    if not (isinstance(damp, (int, float)) and 0 <= damp < float("inf")):
        raise ValueError(f"damp must be a finite number >= 0 (e.g. 0.01), got {damp!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer (e.g. 128), got {block_size!r}")
    if static_groups and spec.granularity != "group":
        raise ValueError("static_groups needs a grouped spec (group_size=...)")


def _check(W: torch.Tensor, H: torch.Tensor, spec: QuantSpec, damp, block_size, static_groups, trace_rows):
    _check_options(spec, damp, block_size, static_groups)
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
    if trace_rows < 0:
        raise ValueError(f"trace_rows must be >= 0, got {trace_rows}")


def gptq_quantize(
    W: torch.Tensor,
    H: torch.Tensor,
    spec: QuantSpec,
    *,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
    static_groups: bool = False,
    trace_rows: int = 0,
) -> GPTQResult:
    """GPTQ (Algorithm 1 of Frantar et al. 2022) on one weight. W: (out_features, in_features), H: (in, in).

    Dead inputs (H[i, i] == 0: the input never fires) get H[i, i] = 1 and W[:, i] = 0. `damp` adds
    λ = damp · mean(diag H) to the diagonal (retried 10x larger, with a warning, if Cholesky fails).
    `act_order` quantizes columns by descending diag(H) (the most active inputs first, while many columns are
    left to absorb their error). `trace_rows` > 0 records the first rows of the evolving W after every column
    (for plots on small layers). Runs in float64 when H is float64, else float32; the grid is `qviz.quant`'s.
    """
    _check(W, H, spec, damp, block_size, static_groups, trace_rows)
    dtype = torch.float64 if H.dtype == torch.float64 else torch.float32
    W0, H0 = W.detach(), H.detach().to(dtype)
    W = W0.to(dtype=dtype, device=H.device).clone()
    H = H0.clone()
    rows, columns = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    grouped = spec.granularity == "group"
    g_idx = (
        torch.arange(columns, device=W.device) // spec.group_size
        if grouped
        else torch.zeros_like(dead, dtype=torch.long)
    )
    if not grouped or static_groups:  # one choice of qparams up front, from the (dead-zeroed) original W
        scale, zero_point = choose_qparams(W, spec)  # (rows, n) or, per-tensor, one (1, 1) pair for every row
    else:
        n_groups = columns // spec.group_size
        scale = torch.ones(rows, n_groups, device=W.device)
        zero_point = torch.zeros(rows, n_groups, dtype=torch.int32, device=W.device)
    pending = set(range(scale.shape[1])) if grouped and not static_groups else set()  # qparams not chosen yet

    perm = (
        torch.argsort(torch.diag(H), descending=True, stable=True)
        if act_order
        else torch.arange(columns, device=W.device)
    )
    invperm = torch.argsort(perm)
    group_of = g_idx[perm].tolist()  # group of the k-th column processed
    # Column-major storage: W[:, i] and W[:, i:] are contiguous for the per-column updates below.
    W, H = W[:, perm].T.contiguous().T, H[perm][:, perm]
    Hinv, damp = _inverse_cholesky(H, damp)

    Q = torch.zeros_like(W)
    codes = torch.zeros(rows, columns, dtype=torch.int32, device=W.device)
    Losses = torch.zeros_like(W)
    trace = []

    def current(pos, i1, i2, W1, Err1):
        """Up-to-date values of the unquantized columns at processing positions `pos` (all in W1 or later)."""
        cur = W[:, pos].clone()
        inside = pos < i2
        cur[:, inside] = W1[:, pos[inside] - i1]
        cur[:, ~inside] -= Err1 @ Hinv[i1:i2, pos[~inside]]
        return cur

    if trace_rows:
        trace.append(W[:trace_rows, invperm].clone())
    # The rounding of one column, written out: round(w / s) (+ z), clamp, (− z) · s, in float32 as
    # `qviz.quant.quantize` + `dequantize` do, bit for bit, but without their checks and bookkeeping, which
    # would cost more than the arithmetic (this loop runs once per column of every weight in the model). For
    # the same reason the block's columns are taken apart once (unbind: views) instead of indexed per column.
    qmin, qmax, asym, f32 = spec.qmin, spec.qmax, not spec.symmetric, dtype == torch.float32
    d_all = torch.diag(Hinv).tolist()
    g_now = None
    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        W1 = W[:, i1:i2].T.contiguous().T  # column-major: each W1[:, i] is contiguous
        Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        w_cols, q_cols, err_cols, h_rows = W1.unbind(1), Q1.unbind(1), Err1.unbind(1), Hinv1.unbind(0)
        for i in range(i2 - i1):
            g = group_of[i1 + i]
            if g in pending:  # first column of this group reached: choose its qparams now
                members = invperm[g_idx == g]  # processing positions of the group's columns
                s, z = choose_qparams(current(members, i1, i2, W1, Err1), spec)
                scale[:, g], zero_point[:, g] = s[:, 0], z[:, 0]
                pending.remove(g)
                g_now = None
            if g != g_now:  # this group's (scale, zero_point) as float32 columns ((1,) per-tensor: broadcast)
                g_now, s_col, z_col = g, scale[:, g].float(), zero_point[:, g].float()
            w = w_cols[i]
            q = torch.div(w, s_col, out=q_cols[i]) if f32 else w.float().div(s_col)
            q.round_()
            if asym:
                q.add_(z_col).clamp_(qmin, qmax).sub_(z_col).mul_(s_col)
            else:
                q.clamp_(qmin, qmax).mul_(s_col)
            if not f32:
                q_cols[i].copy_(q)
            err1 = torch.sub(w, q_cols[i], out=err_cols[i]).div_(d_all[i1 + i])  # (w − q) / Hinv[i, i]
            W1[:, i:].addr_(err1, h_rows[i][i:], alpha=-1)  # W1[:, i:] -= err1 ⊗ Hinv1[i, i:]
            if trace_rows:
                rest = W[:trace_rows, i2:] - Err1[:trace_rows] @ Hinv[i1:i2, i2:]
                Q[:trace_rows, i1 : i1 + i + 1] = Q1[:trace_rows, : i + 1]
                state = torch.cat([Q[:trace_rows, : i1 + i + 1], W1[:trace_rows, i + 1 :], rest], dim=1)
                trace.append(state[:, invperm])
        # The block's codes, recovered from Q1 = (c − z)·s: |c − z| < 2^16, so Q1 / s rounds back exactly.
        cols = torch.tensor(group_of[i1:i2], device=W.device)
        s_blk, z_blk = scale[:, cols].float(), zero_point[:, cols]
        codes[:, i1:i2] = (Q1.float() / s_blk).round_().to(torch.int32) + z_blk
        Q[:, i1:i2] = Q1
        Losses[:, i1:i2] = Err1.pow(2).div_(2)  # (w − q)² / Hinv[i, i]² / 2
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    Q, codes, Losses = Q[:, invperm], codes[:, invperm], Losses[:, invperm]
    # The output error comes free from the losses. GPTQ leaves W − Q = Err·Hinv (each column's error is the
    # sum of the updates it received), so ½·tr((W − Q)(H + λI)(W − Q)ᵀ) = ½‖Err‖² = ΣLosses, exactly; take
    # away the damping term ½λ‖W − Q‖² to get the undamped ½·tr((W − Q) H (W − Q)ᵀ), row by row. (Dead
    # columns: there W − Q counts as 0 and H is 0, so they add nothing either way.)
    lam = damp * torch.diag(H).mean().item()
    D = torch.where(dead, 0.0, W0.to(dtype=dtype, device=Q.device)) - Q
    row_output_error = Losses.sum(1) - 0.5 * lam * D.pow(2).sum(1)
    Q = Q.to(dtype=W0.dtype)
    return GPTQResult(
        Q=Q,
        codes=codes,
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
        trace=torch.stack(trace) if trace_rows else None,
    )


@dataclass(frozen=True)
class GPTQ:
    """GPTQ as a `qviz.calib.GroupMethod` (options as in `gptq_quantize`).

    The driver quantizes each layer's groups of linears in forward order (q/k/v, o, gate/up, down for Llama),
    each with H from the inputs it receives once the groups before it are quantized: the reference's
    "true sequential" order (`qviz.calib.quantize_sequential`). `qviz.calib.AllGroupsAtOnce(GPTQ(...))` takes
    every H from the float layer instead (`quantize_model(..., true_sequential=False)`).
    """

    spec: QuantSpec
    damp: float = 0.01  # λ = damp · mean(diag H)
    block_size: int = 128  # columns per lazy batch
    act_order: bool = False  # columns by descending diag(H)
    static_groups: bool = False  # group qparams from the original W, up front

    def __post_init__(self):
        _check_options(self.spec, self.damp, self.block_size, self.static_groups)

    def quantize_group(self, linears: dict[str, nn.Linear], H: torch.Tensor) -> list[dict]:
        """Quantize linears that all read the input whose H is given, in place; one report row each.

        GPTQ treats rows independently, so they are quantized as one stacked weight: same result, one
        Cholesky and one column loop. Not per-tensor: there the single scale would be shared across the stack.
        """
        names = list(linears)
        stacks = [names] if self.spec.granularity != "tensor" else [[name] for name in names]
        rows = []
        for names in stacks:
            weights = [linears[name].weight.data for name in names]
            r = gptq_quantize(
                torch.cat(weights),
                H,
                self.spec,
                damp=self.damp,
                block_size=self.block_size,
                act_order=self.act_order,
                static_groups=self.static_groups,
            )
            sizes = [w.shape[0] for w in weights]
            for name, W, Q, err in zip(names, weights, r.Q.split(sizes), r.row_output_error.split(sizes)):
                row = linear_report(name, W, Q, H, Q_rtn=fake_quantize(W, self.spec), err=err.sum().item())
                row["damp"] = r.damp
                W.copy_(Q)
                rows.append(row)
        return rows


def quantize_model(
    model: nn.Module,
    spec: QuantSpec,
    windows,
    *,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
    static_groups: bool = False,
    true_sequential: bool = True,
    batch_size: int = 8,
    bos_token_id: int | str | None = "auto",
    progress: bool = True,
) -> list[dict]:
    """GPTQ on every linear inside the decoder layers of `model`, in place (embeddings and lm_head stay).

    windows: (n, seq) calibration token ids, each prefixed with BOS by default (`bos_token_id`, as in
    `qviz.calib.capture_layer_inputs`). true_sequential: inside each layer, each group of linears gets H from
    the inputs the already-quantized groups before it produce (`qviz.calib.quantize_sequential`, one pass of
    the layer); False: all from one pass of the float layer (`qviz.calib.AllGroupsAtOnce`, two passes).
    Returns one row per linear (see `qviz.calib.linear_report`) with, in addition, "rtn_output_rel_error"
    (plain rounding on the same inputs) and "damp" (the damping used).
    """
    method = GPTQ(spec, damp, block_size, act_order, static_groups)  # validates the options
    check_spec(model, spec)
    return quantize_layerwise(
        model,
        method if true_sequential else AllGroupsAtOnce(method),
        windows,
        batch_size=batch_size,
        bos_token_id=bos_token_id,
        progress=progress,
    )
