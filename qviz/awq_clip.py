"""AWQ's weight clipping search: per group, shrink the largest weight until the *output* error is smallest.

After the activation-aware scaling (`qviz.awq`), a few weights in a group can still be much larger than the
rest; they stretch the grid and the many small weights round coarsely. Clipping them trades a large error
on a few weights for a finer grid on all the others. AWQ (Lin et al. 2023) searches the clip bound per
group, measuring what matters, the group's contribution to the layer output:

    max_val(r) = r · max|W_g|,  r = 1 − i/n_grid for i < max_shrink · n_grid   (1, 0.95, ..., 0.55)
    err_g(r)   = mean over tokens t and rows o of ( Σ_j X[t, g_j] (Q(clamp(W, ±max_val))[o, g_j] − W[o, g_j]) )²

Symbols -> variables: W (out_features, in_features) the (already scaled) weight; X (tokens, in_features) its
input; one group g = `group_size` consecutive input columns (a whole row without groups). The best r is
chosen independently for every (row, group): the clamp is applied to W and the usual min/max quantizer of
`qviz.quant` then picks the grid from the clamped values.

AWQ skips q_proj and k_proj: their errors meet inside softmax(QKᵀ), which a per-linear output MSE misjudges.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .quant import QuantSpec, check_tensor, fake_quantize

__all__ = ["ClipResult", "apply_clip", "clip_search", "group_length"]

ROW_BATCH = 256  # output rows searched at once: bounds the (groups, tokens, rows) error tensor


@dataclass(frozen=True)
class ClipResult:
    """What `clip_search` found. Shapes: (out_features, n_groups)."""

    max_val: torch.Tensor  # clip bound per (row, group): clamp W to [-max_val, max_val]
    ratio: torch.Tensor  # max_val / max|W| per (row, group), one of 1, 0.95, ..., 0.55
    error_before: float  # output MSE of plain quantization (r = 1), on the sampled tokens
    error_after: float  # output MSE with the chosen bounds


def group_length(spec: QuantSpec, in_features: int) -> int:
    """Input columns that share one (scale, zero_point): group_size, or the whole row per channel."""
    if spec.granularity == "tensor":
        raise ValueError("clipping is searched per row or group: use granularity 'channel' or 'group'")
    return spec.group_size if spec.granularity == "group" else in_features


def apply_clip(W: torch.Tensor, max_val: torch.Tensor) -> torch.Tensor:
    """W (out, in) clamped to [-max_val, max_val] per (row, group); max_val (out, n_groups)."""
    g = W.reshape(W.shape[0], max_val.shape[1], -1)  # (out, n_groups, group_len)
    bound = max_val.unsqueeze(-1).to(W.dtype)
    return torch.maximum(torch.minimum(g, bound), -bound).reshape(W.shape)


def _group_errors(W: torch.Tensor, Q: torch.Tensor, Xg: torch.Tensor) -> torch.Tensor:
    """Per (row, group) output MSE: Xg (n_groups, tokens, group_len); W, Q (rows, in) -> (rows, n_groups)."""
    n_groups = Xg.shape[0]
    D = (Q - W).reshape(W.shape[0], n_groups, -1).permute(1, 2, 0)  # (n_groups, group_len, rows)
    return torch.bmm(Xg, D).pow(2).mean(1).T  # (n_groups, tokens, rows) -> (rows, n_groups)


@torch.no_grad()
def clip_search(
    W: torch.Tensor,
    X: torch.Tensor,
    spec: QuantSpec,
    *,
    n_grid: int = 20,
    max_shrink: float = 0.5,
    n_tokens: int | None = 512,
) -> ClipResult:
    """Search AWQ's clip bound for every (row, group) of W (out, in) with inputs X (tokens, in).

    n_tokens: evenly spaced tokens of X to measure on (AWQ's reference uses 512); None: all of them.

    >>> W = torch.tensor([[8.0, 1.0, 0.5, -0.2]]); X = torch.ones(4, 4)
    >>> r = clip_search(W, X, QuantSpec(bits=2, symmetric=False, group_size=4))
    >>> float(r.ratio[0, 0]) < 1.0 and r.error_after <= r.error_before
    True
    """
    check_tensor(W, spec)
    if W.dim() != 2 or X.dim() != 2 or X.shape[1] != W.shape[1] or X.shape[0] == 0:
        raise ValueError(
            f"need W (out, in) and X (tokens, in) with tokens >= 1; got {tuple(W.shape)}, {tuple(X.shape)}"
        )
    if not (isinstance(n_grid, int) and n_grid >= 1 and 0 < max_shrink < 1):
        raise ValueError(f"need an integer n_grid >= 1 and 0 < max_shrink < 1, got {n_grid}, {max_shrink}")
    glen = group_length(spec, W.shape[1])
    if n_tokens is not None and X.shape[0] > n_tokens:
        X = X[:: X.shape[0] // n_tokens][:n_tokens]
    W = W.float()
    Xg = X.float().reshape(X.shape[0], -1, glen).transpose(0, 1)  # (n_groups, tokens, group_len)
    ratios = [1 - i / n_grid for i in range(max(1, int(max_shrink * n_grid)))]
    max_vals, best_ratios, first, best = [], [], 0.0, 0.0
    for r0 in range(0, W.shape[0], ROW_BATCH):
        Wb = W[r0 : r0 + ROW_BATCH]
        w_max = Wb.reshape(Wb.shape[0], -1, glen).abs().amax(-1)  # (rows, n_groups)
        best_err = torch.full_like(w_max, float("inf"))
        best_ratio = torch.ones_like(w_max)
        for r in ratios:
            Q = fake_quantize(apply_clip(Wb, w_max * r), spec)
            err = _group_errors(Wb, Q, Xg)
            if r == 1:
                first += err.sum().item()
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_ratio = torch.where(better, torch.full_like(best_ratio, r), best_ratio)
        best += best_err.sum().item()
        max_vals.append(w_max * best_ratio)
        best_ratios.append(best_ratio)
    # Σ over groups of per-group MSEs -> per-output-row MSE of the whole sum would add cross terms; report
    # the mean per-(row, group) error, the quantity the search minimizes.
    n = W.shape[0] * Xg.shape[0]
    return ClipResult(torch.cat(max_vals), torch.cat(best_ratios), first / n, best / n)
