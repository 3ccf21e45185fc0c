"""Writing GGUF blocks: llama.cpp's reference quantizers for Q8_0, Q4_K and Q3_K, and their importance-matrix
variants, so that a weight we quantize is stored exactly as llama.cpp would store it (`qviz.gguf` reads them back).

The k-quants fit every sub-block's grid to its weights with a small search, then quantize the sub-block scales
themselves to 6 bits under one float16 scale per 256-weight super-block:

    Q4_K  8 sub-blocks of 32:  w ≈ (d·sc_j)·q − dmin·m_j,  q in 0..15, sc_j and m_j in 0..63   (4.5 bits/weight)
    Q3_K  16 sub-blocks of 16: w ≈ (d·(sc_j − 32))·(q − 4), q in 0..7, sc_j in 0..63             (3.4375)
    Q8_0  blocks of 32:        w ≈ d·q, q in −127..127 (d = max|w|/127)                          (8.5)

The searches, as in llama.cpp's ggml-quants.c (the names of its functions in brackets):

- `fit_scale_min` [make_qkx2_quants, make_qkx3_quants]: a scale s and a min m ≤ 0 for w ≈ s·q + m. Start from
  the min-max grid, then try nstep + 1 slightly different step sizes; for each, round, and solve the weighted least
  squares for (s, m) given the codes; keep the best (weighted squared error). Sub-block weights: av_x + |w|
  (av_x the RMS of the sub-block) without an importance matrix; imatrix_j · sqrt(σ² + w²) with one.
- `fit_scale_qp` [make_qp_quants]: a scale for non-negative values (the sub-block scales and mins) on a 0..nmax
  grid, step sizes tried around max/nmax, then a few passes of coordinate descent on single codes.
- `fit_scale_q3` [make_q3_quants]: a signed symmetric scale on −nmax..nmax−1, weights w², coordinate descent.
- `fit_scale_sym` [make_qx_quants, rmse_type 1]: the same grid, step sizes tried around max/nmax, given weights.

With an importance matrix (llama.cpp's imatrix: the mean squared input activation of each input column, from
calibration text, `importance_matrix`), errors in columns that meet large activations count more, as GPTQ's and
AWQ's do. Without one (the "_ref" path), the weights depend on the weights alone.

Every step works on all sub-blocks of a tensor at once (rows of a (n_sub, size) tensor); the loops left are
llama.cpp's own search loops over step sizes and code positions. Arithmetic is float32 like llama.cpp's, codes
round half to even like its nearest_int; only the order of the sums differs, so a rare block can land on another
of two equally good candidates. Symbols -> variables: x the weights of a sub-block, w their weights in the fit,
L the codes, d/dmin the float16 super-block scales, sc/m the 6-bit sub-block scales and mins.
"""

from __future__ import annotations

import torch
from torch import nn

from .data import with_bos
from .gguf import BLOCKS, QK_K, GGUFTensor
from .quant import block_rows

__all__ = [
    "KINDS",
    "fit_scale_min",
    "fit_scale_q3",
    "fit_scale_qp",
    "fit_scale_sym",
    "importance_matrix",
    "quantize",
    "quantize_tensors",
]

KINDS = ("Q8_0", "Q4_K", "Q3_K")  # the types `quantize` writes


def quantize(W: torch.Tensor, kind: str, imatrix: torch.Tensor | None = None) -> GGUFTensor:
    """W (rows, columns) as a GGUF tensor of type `kind` ("Q8_0", "Q4_K" or "Q3_K"), block by block as llama.cpp's
    quantizer writes it: `quantize_row_*_ref` without `imatrix`, `quantize_row_*_impl` with one (a (columns,)
    tensor of non-negative importances, e.g. `importance_matrix(...)[name]`; Q8_0 ignores it, as llama.cpp does).
    `qviz.gguf.dequantize` (and the gguf package's dequantizer) turn the result back into floats."""
    if kind not in KINDS:
        raise ValueError(f"unknown GGUF type {kind!r}: qviz writes {', '.join(KINDS)}")
    per_block = BLOCKS[kind][0]
    note = " (llama.cpp falls back to another type for such tensors)"
    x = block_rows(W, per_block, kind, note)
    qw = None
    if imatrix is not None and kind != "Q8_0":
        qw = torch.as_tensor(imatrix).detach().to("cpu", torch.float32).flatten()
        if qw.numel() != W.shape[1]:
            raise ValueError(f"the importance matrix has {qw.numel()} values, W has {W.shape[1]} columns")
        if not torch.isfinite(qw).all() or (qw < 0).any():
            raise ValueError("importance values must be finite and non-negative")
        qw = qw.repeat(W.shape[0]).reshape(-1, QK_K)  # one per weight, super-block by super-block
    blocks = {"Q8_0": _q8_0, "Q4_K": _q4_k, "Q3_K": _q3_k}[kind](x.reshape(-1, per_block), qw)
    return GGUFTensor(f"{kind} of {tuple(W.shape)}", kind, tuple(W.shape), blocks.numpy())


def quantize_tensors(
    floats: dict[str, torch.Tensor], types: dict[str, str], imatrix: dict[str, torch.Tensor] | None = None
) -> dict[str, GGUFTensor]:
    """A whole file's worth of `quantize`: every tensor named in `types` (GGUF name -> "Q8_0", "Q4_K" or "Q3_K"),
    taken from `floats` (GGUF name -> float weight) and quantized with its entry of `imatrix` (GGUF names too, see
    `qviz.models.gguf_name`) when there is one. Returns GGUF name -> GGUFTensor, in the order of `types`."""
    missing = [name for name in types if name not in floats]
    if missing:
        raise ValueError(f"no float weight for {missing[:3]} ({len(missing)} in all)")
    imatrix = imatrix or {}
    out = {}
    for name, kind in types.items():
        t = quantize(floats[name], kind, imatrix.get(name))
        out[name] = GGUFTensor(name, t.type, t.shape, t.data)
    return out


@torch.no_grad()
def importance_matrix(
    model: nn.Module,
    windows: torch.Tensor,
    linears: dict[str, nn.Linear],
    *,
    bos_token_id: int | str | None = "auto",
) -> dict[str, torch.Tensor]:
    """llama.cpp's importance matrix: for each linear, the mean over calibration tokens of x_j² per input column j
    (what `llama-imatrix` computes), from one forward pass of `model` over `windows` (n, seq) token ids, each
    prefixed with BOS as every qviz reader does (`qviz.data.with_bos`). linears: name -> module to record, e.g.
    `qviz.arch.decoder_linears(model)`. Returns name -> (in_features,) float32."""
    ids, _ = with_bos(model, windows, bos_token_id, "calibration windows")
    if ids.shape[1] == 0 or ids.numel() == 0:
        raise ValueError("the importance matrix needs calibration tokens: got empty windows")
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name):
        def record(module, args):
            X = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + X.pow(2).sum(0)
            counts[name] = counts.get(name, 0) + X.shape[0]

        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in linears.items()]
    device = next(model.parameters()).device
    try:
        for row in ids:
            model(input_ids=row[None].to(device))
    finally:
        for h in handles:
            h.remove()
    return {name: (sums[name] / counts[name]).float().cpu() for name in linears}


# --- the searches (llama.cpp's make_*_quants), vectorized over sub-blocks: x, w are (n_sub, size) float32 -------


def _round(v: torch.Tensor) -> torch.Tensor:
    """llama.cpp's nearest_int: round half to even, as float32."""
    return torch.round(v)


def fit_scale_min(x, w, nmax: int, rmin: float, rdelta: float, nstep: int):
    """[make_qkx2_quants / make_qkx3_quants, use_mad=False] (scale, the_min, L) with x ≈ scale·L − the_min,
    L in 0..nmax, the_min >= 0, minimising Σ w·(scale·L − the_min − x)² over nstep + 1 trial step sizes."""
    mn = torch.clamp(x.min(1).values, max=0)  # the grid always reaches 0
    mx = x.max(1).values
    sum_w, sum_x = w.sum(1), (w * x).sum(1)
    flat = mx <= mn
    span = torch.where(flat, torch.ones_like(mx), mx - mn)
    iscale = nmax / span
    scale = 1 / iscale
    L = torch.clamp(_round(iscale[:, None] * (x - mn[:, None])), 0, nmax)
    best = (w * (scale[:, None] * L + mn[:, None] - x) ** 2).sum(1)
    for step in range(nstep + 1):
        iscale = (rmin + rdelta * step + nmax) / torch.where(flat, torch.ones_like(mx), mx - mn)
        v = iscale[:, None] * (x - mn[:, None])
        Laux = torch.where(v > 0, _round(torch.clamp(v, max=nmax)), torch.zeros_like(v))
        sum_l, sum_l2, sum_xl = (w * Laux).sum(1), (w * Laux * Laux).sum(1), (w * Laux * x).sum(1)
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
        positive = this_min > 0  # the grid must reach 0: refit the scale alone with min = 0
        this_scale = torch.where(positive, sum_xl / sum_l2, this_scale)
        this_min = torch.where(positive, torch.zeros_like(this_min), this_min)
        err = (w * (this_scale[:, None] * Laux + this_min[:, None] - x) ** 2).sum(1)
        better = (D > 0) & (err < best) & ~flat
        L = torch.where(better[:, None], Laux, L)
        best = torch.where(better, err, best)
        scale = torch.where(better, this_scale, scale)
        mn = torch.where(better, this_min, mn)
    scale = torch.where(flat, torch.zeros_like(scale), scale)
    L = torch.where(flat[:, None], torch.zeros_like(L), L)
    return scale, -mn, L


def fit_scale_qp(x, w, nmax: int):
    """[make_qp_quants] (scale, L) with x ≈ scale·L, x >= 0, L in 0..nmax, minimising Σ w·(x − scale·L)²:
    step sizes max/(nmax + 0.1·k), k = −4..4, then 5 passes of coordinate descent over single codes."""
    mx = x.max(1).values
    zero = mx < 1e-15
    safe = torch.where(zero, torch.ones_like(mx), mx)
    iscale = nmax / safe
    L = _round(iscale[:, None] * x)
    best = (w * (x - (1 / iscale)[:, None] * L) ** 2).sum(1)
    for k in (-4, -3, -2, -1, 1, 2, 3, 4):
        iscale_k = (0.1 * k + nmax) / safe
        Lk = torch.clamp(_round(iscale_k[:, None] * x), max=nmax)
        mse = (w * (x - (1 / iscale_k)[:, None] * Lk) ** 2).sum(1)
        better = mse < best
        best, iscale = torch.where(better, mse, best), torch.where(better, iscale_k, iscale)
    L = torch.clamp(_round(iscale[:, None] * x), max=nmax)
    sumlx, suml2 = (w * x * L).sum(1), (w * L * L).sum(1)
    for _ in range(5):
        for i in range(x.shape[1]):  # one code at a time: the best code for x_i given the others' fit
            wi, xi, li = w[:, i], x[:, i], L[:, i]
            slx, sl2 = sumlx - wi * xi * li, suml2 - wi * li * li
            ok = (slx > 0) & (sl2 > 0)
            new = torch.clamp(_round(xi * sl2 / torch.where(ok, slx, torch.ones_like(slx))), max=nmax)
            slx, sl2 = slx + wi * xi * new, sl2 + wi * new * new
            take = ok & (new != li) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            L[:, i] = torch.where(take, new, li)
            sumlx, suml2 = torch.where(take, slx, sumlx), torch.where(take, sl2, suml2)
    scale = torch.where(suml2 > 0, sumlx / torch.where(suml2 > 0, suml2, torch.ones_like(suml2)), 0 * suml2)
    return torch.where(zero, torch.zeros_like(scale), scale), torch.where(zero[:, None], 0 * L, L)


def _signed_max(x):
    """The entry of largest magnitude of each row, with its sign (the first one on a tie, as llama.cpp)."""
    return x.gather(1, x.abs().argmax(1, keepdim=True)).squeeze(1)


def fit_scale_q3(x, nmax: int):
    """[make_q3_quants, do_rmse=True] (scale, L) with x ≈ scale·L, L in −nmax..nmax−1 (returned + nmax), weights
    x²: the min-max grid (its step set by the signed largest value), then 5 passes of coordinate descent."""
    mx = _signed_max(x)
    zero = x.abs().max(1).values < 1e-15
    iscale = -nmax / torch.where(zero, torch.ones_like(mx), mx)
    L = torch.clamp(_round(iscale[:, None] * x), -nmax, nmax - 1)
    w = x * x
    sumlx, suml2 = (w * x * L).sum(1), (w * L * L).sum(1)
    for _ in range(5):
        for i in range(x.shape[1]):
            wi, xi, li = w[:, i], x[:, i], L[:, i]
            slx = sumlx - wi * xi * li
            ok = slx > 0
            sl2 = suml2 - wi * li * li
            new = torch.clamp(_round(xi * sl2 / torch.where(ok, slx, torch.ones_like(slx))), -nmax, nmax - 1)
            slx, sl2 = slx + wi * xi * new, sl2 + wi * new * new
            take = ok & (new != li) & (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            L[:, i] = torch.where(take, new, li)
            sumlx, suml2 = torch.where(take, slx, sumlx), torch.where(take, sl2, suml2)
    scale = torch.where(suml2 > 0, sumlx / torch.where(suml2 > 0, suml2, torch.ones_like(suml2)), 0 * suml2)
    return torch.where(zero, torch.zeros_like(scale), scale), torch.where(zero[:, None], 0 * L, L + nmax)


def fit_scale_sym(x, w, nmax: int):
    """[make_qx_quants, rmse_type=1 with weights w] (scale, L), x ≈ scale·L, L in −nmax..nmax−1 (returned + nmax):
    the least-squares scale of the min-max grid's codes, then 18 other step sizes, keeping the one with the largest
    (Σ w·x·L)² / Σ w·L², i.e. the smallest weighted error after refitting the scale."""
    mx = _signed_max(x)
    zero = x.abs().max(1).values < 1e-15
    safe = torch.where(zero, torch.ones_like(mx), mx)
    L = torch.clamp(_round((-nmax / safe)[:, None] * x), -nmax, nmax - 1)
    sumlx, suml2 = (w * x * L).sum(1), (w * L * L).sum(1)
    scale = torch.where(suml2 != 0, sumlx / torch.where(suml2 != 0, suml2, torch.ones_like(suml2)), 0 * suml2)
    best = scale * sumlx
    for k in (-9, -8, -7, -6, -5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 6, 7, 8, 9):
        Lk = torch.clamp(_round((-(nmax + 0.1 * k) / safe)[:, None] * x), -nmax, nmax - 1)
        slx, sl2 = (w * x * Lk).sum(1), (w * Lk * Lk).sum(1)
        better = (sl2 > 0) & (slx * slx > best * sl2)
        L = torch.where(better[:, None], Lk, L)
        scale = torch.where(better, slx / torch.where(sl2 > 0, sl2, torch.ones_like(sl2)), scale)
        best = torch.where(better, scale * slx, best)
    return torch.where(zero, torch.zeros_like(scale), scale), torch.where(zero[:, None], 0 * L, L + nmax)


# --- the block writers: (n_blocks, weights) float32 -> (n_blocks, bytes) uint8 -------------------------------------


def _f16_bytes(v: torch.Tensor) -> torch.Tensor:
    """(n,) float32 -> (n, 2) bytes of the float16 value (little-endian)."""
    return v.to(torch.float16).reshape(-1, 1).view(torch.uint8)


def _q8_0(x, qw):
    """[quantize_row_q8_0_ref] d = max|x|/127, q = round(x/d) half away from zero (C's roundf)."""
    d = x.abs().max(1).values / 127
    inv = torch.where(d > 0, 1 / torch.where(d > 0, d, torch.ones_like(d)), torch.zeros_like(d))
    v = x * inv[:, None]
    q = (torch.sign(v) * torch.floor(v.abs() + 0.5)).to(torch.int8)
    return torch.cat([_f16_bytes(d), q.view(torch.uint8)], dim=1)


def _requantize(x, d, offset, nmax):
    """Codes of x (n_sub, size) on the final grid d·L − offset (d, offset: (n_sub, 1)), once the sub-block scales
    are 6-bit codes and d float16. Where d is 0 the result is meaningless: the callers keep the search's codes."""
    safe = torch.where(d != 0, d, torch.ones_like(d))
    return torch.clamp(_round((x + offset) / safe), 0, nmax)


def _pack_k4_scales(ls: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
    """8 six-bit scales and mins per super-block -> llama.cpp's 12 bytes (the inverse of `gguf.k4_scales_mins`)."""
    ls, lm = ls.to(torch.uint8), lm.to(torch.uint8)
    low = torch.cat([ls[:, :4] | ((ls[:, 4:] >> 4) << 6), lm[:, :4] | ((lm[:, 4:] >> 4) << 6)], dim=1)
    return torch.cat([low, (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)], dim=1)


def _q4_k(x, qw):
    """[quantize_row_q4_K_ref / _impl] one super-block of 256 per row of x."""
    n = x.shape[0]
    sub = x.reshape(-1, 32)  # (n·8, 32)
    if qw is None:
        av_x = sub.pow(2).mean(1, keepdim=True).sqrt()  # RMS of the sub-block
        weights = av_x + sub.abs()
        scales, mins, L = fit_scale_min(sub, weights, 15, -1.0, 0.1, 20)
        scales, mins = scales.reshape(n, 8), mins.reshape(n, 8)
        max_scale = torch.clamp(scales.max(1).values, min=0)
        max_min = torch.clamp(mins.max(1).values, min=0)
        inv_scale = torch.where(max_scale > 0, 63 / torch.where(max_scale > 0, max_scale, 1.0), 0.0)
        inv_min = torch.where(max_min > 0, 63 / torch.where(max_min > 0, max_min, 1.0), 0.0)
        ls = torch.clamp(_round(inv_scale[:, None] * scales), 0, 63)
        lm = torch.clamp(_round(inv_min[:, None] * mins), 0, 63)
        d, dmin = max_scale / 63, max_min / 63
    else:
        sigma2 = 2 * x.pow(2).sum(1) / QK_K
        weights = qw.reshape(-1, 32) * torch.sqrt(sigma2.repeat_interleave(8)[:, None] + sub * sub)
        scales, mins, L = fit_scale_min(sub, weights, 15, -0.9, 0.05, 36)
        sw = weights.sum(1).reshape(n, 8)
        d, ls = fit_scale_qp(scales.reshape(n, 8), sw, 63)
        dmin, lm = fit_scale_qp(mins.reshape(n, 8), sw, 63)
    d16, dmin16 = d.to(torch.float16).float(), dmin.to(torch.float16).float()
    step = (d16[:, None] * ls).reshape(-1, 1)  # (n·8, 1): each sub-block's final step d·sc_j
    offset = (dmin16[:, None] * lm).reshape(-1, 1)
    L = torch.where(step != 0, _requantize(sub, step, offset, 15), L).reshape(n, QK_K).to(torch.uint8)
    chunks = L.reshape(n, 4, 2, 32)  # 64 weights per 32 bytes: sub-block 2i in the low nibbles, 2i + 1 high
    qs = (chunks[:, :, 0] | (chunks[:, :, 1] << 4)).reshape(n, 128)
    return torch.cat([_f16_bytes(d), _f16_bytes(dmin), _pack_k4_scales(ls, lm), qs], dim=1)


def _q3_k(x, qw):
    """[quantize_row_q3_K_ref / _impl] one super-block of 256 per row of x."""
    n = x.shape[0]
    sub = x.reshape(-1, 16)  # (n·16, 16)
    if qw is None:
        scales, L = fit_scale_q3(sub, 4)
        scales = scales.reshape(n, 16)
        max_scale = _signed_max(scales)  # the scale of largest magnitude, signed
        has = max_scale != 0
        iscale = -32 / torch.where(has, max_scale, torch.ones_like(max_scale))
        ls = torch.clamp(_round(iscale[:, None] * scales), -32, 31) + 32
        ls = torch.where(has[:, None], ls, torch.zeros_like(ls))
        d = torch.where(has, 1 / iscale, torch.zeros_like(iscale))
    else:
        sigma2 = 2 * x.pow(2).sum(1) / QK_K
        weights = qw.reshape(-1, 16) * torch.sqrt(sigma2.repeat_interleave(16)[:, None] + sub * sub)
        scales, L = fit_scale_sym(sub, weights, 4)
        d, ls = fit_scale_sym(scales.reshape(n, 16), weights.sum(1).reshape(n, 16), 32)
    d16 = d.to(torch.float16).float()
    step = (d16[:, None] * (ls - 32)).reshape(-1, 1)  # (n·16, 1)
    safe = torch.where(step != 0, step, torch.ones_like(step))
    L = torch.where(step != 0, torch.clamp(_round(sub / safe), -4, 3) + 4, L).reshape(n, QK_K).to(torch.uint8)
    ls = ls.to(torch.uint8)
    scale_bytes = torch.cat(
        [(ls[:, :8] & 0xF) | ((ls[:, 8:] & 0xF) << 4),  # low 4 bits: j < 8 low nibble, j >= 8 high nibble
         sum(((ls[:, 4 * k : 4 * k + 4] >> 4) << (2 * k)) for k in range(4))],  # top 2 bits of j at 2·(j // 4)
        dim=1,
    )  # fmt: skip
    high = L >> 2  # the third bit of each code, in hmask[j % 32] at bit j // 32
    hmask = sum(high[:, 32 * k : 32 * k + 32] << k for k in range(8)).to(torch.uint8)
    low = (L & 3).reshape(n, 2, 4, 32)  # per 128 weights: 4 runs of 32 in bit pairs 0, 2, 4, 6
    qs = sum(low[:, :, k] << (2 * k) for k in range(4)).to(torch.uint8).reshape(n, 64)
    return torch.cat([hmask, qs, scale_bytes.to(torch.uint8), _f16_bytes(d)], dim=1)
