"""AWQ's weight clipping search: per group, shrink the largest weight until the *output* error is smallest.

After the activation-aware scaling (`qviz.awq`), a few weights in a group can still be much larger than the
rest; they stretch the grid and the many small weights round coarsely. Clipping them trades a large error
on a few weights for a finer grid on all the others. AWQ (Lin et al. 2023) searches the clip bound per
group, measuring what matters, the group's contribution to the layer output:

    max_val(r) = r · max|W_g|,  r = 1 − i/n_grid for i < max_shrink · n_grid   (1, 0.95, ..., 0.55)
    err_g(r)   = mean over tokens t of ( Σ_{j in g} X[t, j] (Q(clamp(W, ±max_val))[o, j] − W[o, j]) )²
               = ½ · d H_g dᵀ,   d = Q(...)[o, g] − W[o, g],  H_g the (g, g) diagonal block of H = 2XᵀX/n

Symbols -> variables: W (out_features, in_features) the (already scaled) weight; H (in_features, in_features)
the running 2XᵀX/n of its input over *all* calibration tokens (`qviz.calib.Hessian`; the reference code
instead replays a 512-token sample, which gives the same objective on fewer tokens); one group g =
`group_size` consecutive input columns (a whole row without groups). The best r is chosen independently for
every (row, group); the clamp is applied to W and `qviz.quant`'s min/max quantizer then picks the grid.

AWQ skips q_proj and k_proj: their errors meet inside softmax(QKᵀ), which a per-linear output MSE misjudges.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .quant import QuantSpec, check_tensor, fake_quantize

__all__ = ["ClipResult", "apply_clip", "clip_search", "group_absmax", "group_length"]


@dataclass(frozen=True)
class ClipResult:
    """What `clip_search` found. Shapes: (out_features, n_groups)."""

    max_val: torch.Tensor  # clip bound per (row, group): clamp W to [-max_val, max_val]
    ratio: torch.Tensor  # max_val / max|W| per (row, group), one of 1, 0.95, ..., 0.55
    error_before: float  # mean over (row, group) of err_g at r = 1 (plain rounding)
    error_after: float  # ... at the chosen bounds


def group_length(spec: QuantSpec, in_features: int) -> int:
    """Input columns that share one (scale, zero_point): group_size, or the whole row per channel."""
    if spec.granularity == "tensor":
        raise ValueError("clipping is searched per row or group: use granularity 'channel' or 'group'")
    return spec.group_size if spec.granularity == "group" else in_features


def group_absmax(W: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """max|W| per (row, group) of W (out, in): (out, n_groups), the bound a clip ratio of 1 leaves alone."""
    return W.reshape(W.shape[0], -1, group_length(spec, W.shape[1])).abs().amax(-1)


def apply_clip(W: torch.Tensor, max_val: torch.Tensor) -> torch.Tensor:
    """W (out, in) clamped to [-max_val, max_val] per (row, group); max_val (out, n_groups)."""
    g = W.reshape(W.shape[0], max_val.shape[1], -1)  # (out, n_groups, group_len)
    bound = max_val.unsqueeze(-1).to(W.dtype)
    return torch.maximum(torch.minimum(g, bound), -bound).reshape(W.shape)


def _diagonal_blocks(H: torch.Tensor, glen: int) -> torch.Tensor:
    """The (glen, glen) diagonal blocks of H (in, in), one per group: (n_groups, glen, glen)."""
    n = H.shape[0] // glen
    idx = torch.arange(n, device=H.device)
    return H.reshape(n, glen, n, glen)[idx, :, idx, :]


def _group_errors(W: torch.Tensor, Q: torch.Tensor, Hg: torch.Tensor) -> torch.Tensor:
    """err_g = ½ d H_g dᵀ per (row, group). W, Q (rows, in); Hg (n_groups, glen, glen) -> (rows, n_groups)."""
    D = (Q - W).reshape(W.shape[0], Hg.shape[0], -1).transpose(0, 1)  # (n_groups, rows, glen)
    return 0.5 * (torch.bmm(D, Hg) * D).sum(-1).T


@torch.no_grad()
def clip_search(
    W: torch.Tensor, H: torch.Tensor, spec: QuantSpec, *, n_grid: int = 20, max_shrink: float = 0.5
) -> ClipResult:
    """Search AWQ's clip bound for every (row, group) of W (out, in), given H = 2XᵀX/n (in, in).

    >>> W = torch.tensor([[8.0, 1.0, 0.5, -0.2]]); X = torch.ones(4, 4)
    >>> r = clip_search(W, 2 * X.T @ X / 4, QuantSpec(bits=2, symmetric=False, group_size=4))
    >>> float(r.ratio[0, 0]) < 1.0 and r.error_after <= r.error_before
    True
    """
    check_tensor(W, spec)
    if W.dim() != 2 or not isinstance(H, torch.Tensor) or H.shape != (W.shape[1], W.shape[1]):
        shape = tuple(H.shape) if isinstance(H, torch.Tensor) else type(H).__name__
        raise ValueError(f"need W (out, in) and H (in, in); got {tuple(W.shape)} and {shape}")
    if not (isinstance(n_grid, int) and n_grid >= 1 and 0 < max_shrink < 1):
        raise ValueError(f"need an integer n_grid >= 1 and 0 < max_shrink < 1, got {n_grid}, {max_shrink}")
    W = W.float()
    Hg = _diagonal_blocks(H.float().to(W.device), group_length(spec, W.shape[1]))
    w_max = group_absmax(W, spec)  # (rows, n_groups)
    best_err = torch.full_like(w_max, float("inf"))
    best_ratio = torch.ones_like(w_max)
    first = None
    for r in [1 - i / n_grid for i in range(max(1, int(max_shrink * n_grid)))]:
        err = _group_errors(W, fake_quantize(apply_clip(W, w_max * r), spec), Hg)
        first = err.mean().item() if first is None else first
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better, torch.full_like(best_ratio, r), best_ratio)
    return ClipResult(w_max * best_ratio, best_ratio, first, best_err.mean().item())
