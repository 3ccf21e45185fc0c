"""qviz.kquants: llama.cpp's Q8_0 / Q4_K / Q3_K writers.

Oracles: the gguf package (its Q8_0 quantizer, and its dequantizer for every type), and below a line-by-line
scalar transcription of llama.cpp's C reference (ggml-quants.c: make_qkx2/qkx3/qp/q3/qx_quants and
quantize_row_q4_K / q3_K _ref and _impl) in float32, one weight at a time, independent of the vectorized code.
"""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from qviz import gguf as qgguf
from qviz import kquants

f32 = np.float32


def nearest_int(v):
    return int(np.rint(f32(v)))


def make_qkx(x, w, nmax, rmin, rdelta, nstep):
    n = len(x)
    mn, mx = min(x), max(x)
    sum_w = f32(0)
    sum_x = f32(0)
    for i in range(n):
        sum_w = f32(sum_w + w[i])
        sum_x = f32(sum_x + f32(w[i] * x[i]))
    mn = min(mn, f32(0))
    if mx <= mn:
        return f32(0), f32(-mn), [0] * n
    iscale = f32(nmax / f32(mx - mn))
    scale = f32(1 / iscale)
    L = [max(0, min(nmax, nearest_int(iscale * f32(x[i] - mn)))) for i in range(n)]
    best = f32(0)
    for i in range(n):
        diff = f32(f32(scale * L[i]) + mn - x[i])
        best = f32(best + f32(w[i] * f32(diff * diff)))
    for step in range(nstep + 1):
        iscale = f32(f32(f32(rmin) + f32(f32(rdelta) * step) + nmax) / f32(mx - mn))
        Laux, sl, sl2, sxl = [], f32(0), f32(0), f32(0)
        for i in range(n):
            v = f32(iscale * f32(x[i] - mn))
            l_ = nearest_int(min(v, f32(nmax))) if v > 0 else 0
            Laux.append(l_)
            sl = f32(sl + f32(w[i] * l_))
            sl2 = f32(sl2 + f32(f32(w[i] * l_) * l_))
            sxl = f32(sxl + f32(f32(w[i] * l_) * x[i]))
        D = f32(f32(sum_w * sl2) - f32(sl * sl))
        if D > 0:
            this_scale = f32(f32(f32(sum_w * sxl) - f32(sum_x * sl)) / D)
            this_min = f32(f32(f32(sl2 * sum_x) - f32(sl * sxl)) / D)
            if this_min > 0:
                this_min, this_scale = f32(0), f32(sxl / sl2)
            err = f32(0)
            for i in range(n):
                diff = f32(f32(this_scale * Laux[i]) + this_min - x[i])
                err = f32(err + f32(w[i] * f32(diff * diff)))
            if err < best:
                L, best, scale, mn = Laux, err, this_scale, this_min
    return scale, f32(-mn), L


def make_qp(x, w, nmax):
    n = len(x)
    mx = max(x)
    if mx < 1e-15:
        return f32(0), [0] * n
    iscale = f32(nmax / mx)
    L = [nearest_int(iscale * x[i]) for i in range(n)]
    scale = f32(1 / iscale)
    best = f32(0)
    for i in range(n):
        diff = f32(x[i] - f32(scale * L[i]))
        best = f32(best + f32(f32(w[i] * diff) * diff))
    for k in (-4, -3, -2, -1, 1, 2, 3, 4):
        isk = f32(f32(f32(0.1) * k + nmax) / mx)
        sk = f32(1 / isk)
        mse = f32(0)
        for i in range(n):
            diff = f32(x[i] - f32(sk * min(nmax, nearest_int(isk * x[i]))))
            mse = f32(mse + f32(f32(w[i] * diff) * diff))
        if mse < best:
            best, iscale = mse, isk
    L = [min(nmax, nearest_int(iscale * x[i])) for i in range(n)]
    sumlx, suml2 = f32(0), f32(0)
    for i in range(n):
        sumlx = f32(sumlx + f32(f32(w[i] * x[i]) * L[i]))
        suml2 = f32(suml2 + f32(f32(w[i] * L[i]) * L[i]))
    for _ in range(5):
        for i in range(n):
            slx = f32(sumlx - f32(f32(w[i] * x[i]) * L[i]))
            sl2 = f32(suml2 - f32(f32(w[i] * L[i]) * L[i]))
            if slx > 0 and sl2 > 0:
                new = min(nmax, nearest_int(f32(f32(x[i] * sl2) / slx)))
                if new != L[i]:
                    slx = f32(slx + f32(f32(w[i] * x[i]) * new))
                    sl2 = f32(sl2 + f32(f32(w[i] * new) * new))
                    if f32(f32(slx * slx) * suml2) > f32(f32(sumlx * sumlx) * sl2):
                        L[i], sumlx, suml2 = new, slx, sl2
    return (f32(sumlx / suml2) if suml2 > 0 else f32(0)), L


def signed_max(x):
    best, amax = f32(0), f32(0)
    for v in x:
        if abs(v) > amax:
            amax, best = abs(v), v
    return best, amax


def make_q3(x, nmax):
    n = len(x)
    mx, amax = signed_max(x)
    if amax < 1e-15:
        return f32(0), [0] * n
    iscale = f32(-nmax / mx)
    L, sumlx, suml2 = [], f32(0), f32(0)
    for i in range(n):
        l_ = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
        L.append(l_)
        w = f32(x[i] * x[i])
        sumlx = f32(sumlx + f32(f32(w * x[i]) * l_))
        suml2 = f32(suml2 + f32(f32(w * l_) * l_))
    for _ in range(5):
        for i in range(n):
            w = f32(x[i] * x[i])
            slx = f32(sumlx - f32(f32(w * x[i]) * L[i]))
            if slx > 0:
                sl2 = f32(suml2 - f32(f32(w * L[i]) * L[i]))
                new = max(-nmax, min(nmax - 1, nearest_int(f32(f32(x[i] * sl2) / slx))))
                if new != L[i]:
                    slx = f32(slx + f32(f32(w * x[i]) * new))
                    sl2 = f32(sl2 + f32(f32(w * new) * new))
                    if sl2 > 0 and f32(f32(slx * slx) * suml2) > f32(f32(sumlx * sumlx) * sl2):
                        L[i], sumlx, suml2 = new, slx, sl2
    return (f32(sumlx / suml2) if suml2 > 0 else f32(0)), [v + nmax for v in L]


def make_qx(x, w, nmax):
    n = len(x)
    mx, amax = signed_max(x)
    if amax < 1e-15:
        return f32(0), [0] * n

    def fit(iscale):
        L, slx, sl2 = [], f32(0), f32(0)
        for i in range(n):
            l_ = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
            L.append(l_)
            slx = f32(slx + f32(f32(w[i] * x[i]) * l_))
            sl2 = f32(sl2 + f32(f32(w[i] * l_) * l_))
        return L, slx, sl2

    L, sumlx, suml2 = fit(f32(-nmax / mx))
    scale = f32(sumlx / suml2) if suml2 else f32(0)
    best = f32(scale * sumlx)
    for k in range(-9, 10):
        if k == 0:
            continue
        Lk, slx, sl2 = fit(f32(-f32(nmax + f32(0.1) * k) / mx))
        if sl2 > 0 and f32(slx * slx) > f32(best * sl2):
            L, scale = Lk, f32(slx / sl2)
            best = f32(scale * slx)
    return scale, [v + nmax for v in L]


def f16(v):
    return f32(np.float16(v))


def q4_k_block(x, qw=None):
    """quantize_row_q4_K_ref (qw None) / quantize_row_q4_K_impl, one super-block -> (d, dmin, ls, lm, L)."""
    scales, mins, L = [], [], []
    if qw is None:
        for j in range(8):
            xs = x[32 * j : 32 * j + 32]
            av = f32(np.sqrt(f32(sum(f32(v * v) for v in xs) / 32)))
            s, m, l_ = make_qkx(xs, [f32(av + abs(v)) for v in xs], 15, -1.0, 0.1, 20)
            scales.append(s), mins.append(m), L.extend(l_)
        max_scale, max_min = max([f32(0)] + scales), max([f32(0)] + mins)
        inv_s = f32(63 / max_scale) if max_scale > 0 else f32(0)
        inv_m = f32(63 / max_min) if max_min > 0 else f32(0)
        ls = [min(63, nearest_int(inv_s * s)) for s in scales]
        lm = [min(63, nearest_int(inv_m * m)) for m in mins]
        d, dmin = f16(max_scale / f32(63)), f16(max_min / f32(63))
    else:
        sigma2 = f32(2 * sum(f32(v * v) for v in x) / 256)
        sw = []
        for j in range(8):
            xs = x[32 * j : 32 * j + 32]
            w = [f32(qw[32 * j + i] * np.sqrt(f32(sigma2 + f32(v * v)))) for i, v in enumerate(xs)]
            sw.append(f32(sum(w, f32(0))))
            s, m, l_ = make_qkx(xs, w, 15, -0.9, 0.05, 36)
            scales.append(s), mins.append(m), L.extend(l_)
        d, ls = make_qp(scales, sw, 63)
        dmin, lm = make_qp(mins, sw, 63)
        d, dmin = f16(d), f16(dmin)
    for j in range(8):
        dj = f32(d * ls[j])
        if dj:
            dm = f32(dmin * lm[j])
            for i in range(32):
                L[32 * j + i] = max(0, min(15, nearest_int(f32(f32(x[32 * j + i] + dm) / dj))))
    return d, dmin, ls, lm, L


def q3_k_block(x, qw=None):
    """quantize_row_q3_K_ref / _impl, one super-block -> (d, ls, L)."""
    scales, L = [], []
    if qw is None:
        for j in range(16):
            s, l_ = make_q3(x[16 * j : 16 * j + 16], 4)
            scales.append(s), L.extend(l_)
        max_scale, _ = signed_max(scales)
        if max_scale:
            iscale = f32(-32 / max_scale)
            ls = [max(-32, min(31, nearest_int(iscale * s))) + 32 for s in scales]
            d = f16(f32(1 / iscale))
        else:
            ls, d = [0] * 16, f32(0)
    else:
        sigma2 = f32(2 * sum(f32(v * v) for v in x) / 256)
        sw = []
        for j in range(16):
            xs = x[16 * j : 16 * j + 16]
            w = [f32(qw[16 * j + i] * np.sqrt(f32(sigma2 + f32(v * v)))) for i, v in enumerate(xs)]
            sw.append(f32(sum(w, f32(0))))
            s, l_ = make_qx(xs, w, 4)
            scales.append(s), L.extend(l_)
        d, ls = make_qx(scales, sw, 32)
        d = f16(d)
    for j in range(16):
        dj = f32(d * (ls[j] - 32))
        if dj:
            for i in range(16):
                L[16 * j + i] = max(-4, min(3, nearest_int(f32(x[16 * j + i] / dj)))) + 4
    return d, ls, L


def _fields_q4_k(block: np.ndarray):
    """(d, dmin, ls, lm, L) read back from our 144 bytes with qviz.gguf's own unpacking."""
    b = torch.from_numpy(block[None].copy())
    sc, m = qgguf.k4_scales_mins(b[:, 4:16])
    L = qgguf._chunks_of_64(b[:, 16:144])[0]
    d, dmin = qgguf._f16(b[:, 0:2]).item(), qgguf._f16(b[:, 2:4]).item()
    return d, dmin, sc[0].tolist(), m[0].tolist(), L.tolist()


def _weights(rows=6, cols=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g) * 0.02
    W[:, 7] *= 30  # an outlier column, as real layers have
    W[1, :256] = 0.0  # an all-zero super-block
    W[2, 256:272] = 0.01  # a constant sub-block
    return W


def _agrees(kind, use_imatrix, seed):
    """Quantize with qviz and with the scalar transcription; return (blocks identical, all blocks, qviz's squared
    error, the transcription's). The two sum in different orders, so where two candidates of a search are
    equally good to float32 precision (it happens: 1e-7 apart), they may pick differently; both are llama.cpp's
    answer up to rounding, so the test asks for most blocks identical and the same error overall."""
    W = _weights(rows=8, seed=seed)
    qw = (
        torch.rand(W.shape[1], generator=torch.Generator().manual_seed(seed + 1)) * 4 if use_imatrix else None
    )
    values = qgguf.dequantize(kquants.quantize(W, kind, qw)).reshape(-1, 256)
    x = W.numpy().astype(np.float32).reshape(-1, 256)
    same, ours, theirs = 0, 0.0, 0.0
    for i in range(len(x)):
        qwi = None if qw is None else qw.numpy()[(i % 2) * 256 : (i % 2) * 256 + 256]
        if kind == "Q4_K":
            d, dmin, ls, lm, L = q4_k_block(list(x[i]), qwi)
            expected = [f32(f32(d * ls[k // 32]) * L[k]) - f32(dmin * lm[k // 32]) for k in range(256)]
        else:
            d, ls, L = q3_k_block(list(x[i]), qwi)
            expected = [f32(f32(d * (ls[k // 16] - 32)) * (L[k] - 4)) for k in range(256)]
        expected = torch.tensor(np.array(expected, dtype=np.float32))
        same += torch.equal(values[i], expected)
        ours += (values[i] - torch.from_numpy(x[i])).double().pow(2).sum().item()
        theirs += (expected - torch.from_numpy(x[i])).double().pow(2).sum().item()
    return same, len(x), ours, theirs


@pytest.mark.parametrize("kind", ["Q4_K", "Q3_K"])
@pytest.mark.parametrize("use_imatrix", [False, True], ids=["ref", "imatrix"])
def test_matches_scalar_transcription_of_llama_cpp(kind, use_imatrix):
    same, n, ours, theirs = _agrees(kind, use_imatrix, seed=0)
    assert same >= 0.8 * n, f"only {same} of {n} super-blocks identical"
    assert abs(ours / theirs - 1) < 0.01


def test_q8_0_bytes_equal_gguf_quantizer():
    W = _weights(rows=4, cols=256, seed=4)
    theirs = quants.quantize(W.numpy(), GGMLQuantizationType.Q8_0).reshape(-1, 34)
    assert np.array_equal(kquants.quantize(W, "Q8_0").data, theirs)


@pytest.mark.parametrize("kind", kquants.KINDS)
def test_blocks_decode_in_gguf_to_our_values(kind):
    W = _weights(seed=5)
    for imatrix in (None, torch.rand(W.shape[1]) + 0.1):
        t = kquants.quantize(W, kind, imatrix)
        assert t.data.shape == (W.numel() // qgguf.BLOCKS[kind][0], qgguf.BLOCKS[kind][1])
        theirs = quants.dequantize(t.data, GGMLQuantizationType[kind]).reshape(W.shape)
        assert torch.equal(qgguf.dequantize(t), torch.from_numpy(theirs.copy()))
        rel = (qgguf.dequantize(t) - W).pow(2).sum() / W.pow(2).sum()
        assert rel < {"Q8_0": 1e-4, "Q4_K": 0.02, "Q3_K": 0.08}[kind]


def test_importance_matrix_lowers_the_weighted_error():
    """What the imatrix is for: with large importances on a few columns, their error must fall, and the
    importance-weighted error of the whole tensor with it."""
    W = _weights(rows=64, cols=512, seed=6)
    imp = torch.ones(512)
    imp[::16] = 100.0
    for kind in ("Q4_K", "Q3_K"):
        plain = qgguf.dequantize(kquants.quantize(W, kind))
        weighted = qgguf.dequantize(kquants.quantize(W, kind, imp))
        err = lambda Q: ((Q - W).pow(2) * imp).sum().item()  # noqa: E731
        assert err(weighted) < 0.9 * err(plain), kind


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.zeros(4, 100), "Q4_K"), "blocks of 256"),
        ((torch.zeros(4, 256), "Q5_K"), "qviz writes Q8_0, Q4_K, Q3_K"),
        ((torch.full((2, 256), float("nan")), "Q4_K"), "NaN"),
        ((torch.zeros(256), "Q4_K"), "2-D"),
        ((torch.zeros(2, 256), "Q4_K", torch.ones(128)), "128 values, W has 256 columns"),
        ((torch.zeros(2, 256), "Q3_K", -torch.ones(256)), "non-negative"),
    ],
)
def test_bad_input_is_refused(args, match):
    with pytest.raises(ValueError, match=match):
        kquants.quantize(*args)


@pytest.mark.parametrize(
    "fit, oracle",
    [
        (
            lambda x, w: kquants.fit_scale_min(x, w, 15, -1.0, 0.1, 20),
            lambda x, w: make_qkx(x, w, 15, -1.0, 0.1, 20),
        ),
        (
            lambda x, w: kquants.fit_scale_min(x, w, 15, -0.9, 0.05, 36),
            lambda x, w: make_qkx(x, w, 15, -0.9, 0.05, 36),
        ),
        (lambda x, w: kquants.fit_scale_qp(x.abs(), w, 63), lambda x, w: make_qp([abs(v) for v in x], w, 63)),
        (lambda x, w: kquants.fit_scale_q3(x, 4), lambda x, w: make_q3(x, 4)),
        (lambda x, w: kquants.fit_scale_sym(x, w, 4), lambda x, w: make_qx(x, w, 4)),
    ],
    ids=["qkx2", "qkx3", "qp", "q3", "qx"],
)
def test_each_search_matches_its_transcription(fit, oracle):
    """Each vectorized search against its scalar transcription on 300 random groups of 16 (heavy-tailed, like
    weights, with outliers): the same codes for nearly all (float32 near-ties aside; 297-300 of 300 when
    written), and for the same codes the same scale up to float32 cancellation."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(300, 16, generator=g) * torch.rand(300, 1, generator=g) ** 3
    x[::7, 3] *= 20
    w = torch.rand(300, 16, generator=g) + 0.05
    out = fit(x, w)
    scale, L = out[0], out[-1]
    same_codes = close_scales = 0
    for i in range(len(x)):
        ref = oracle([f32(v) for v in x[i].tolist()], [f32(v) for v in w[i].tolist()])
        if L[i].int().tolist() == [int(v) for v in ref[-1]]:
            same_codes += 1
            close_scales += abs(scale[i].item() - ref[0]) <= 1e-4 * abs(ref[0])
    assert same_codes >= 0.98 * len(x), f"codes identical for {same_codes} of {len(x)}"
    assert close_scales == same_codes


@pytest.mark.slow
def test_requantizing_gemmas_released_q4_k_tensors_gives_back_their_bytes():
    """The strongest check that qviz.kquants is llama.cpp's Q4_K writer: Gemma's release was written by llama.cpp;
    quantizing its dequantized Q4_K tensors again must give back the file's own blocks (byte for byte, but for
    float32 near-ties: at least 99.5% of the super-blocks; over all 27 Q4_K tensors 99.92% when written)."""
    from qviz.models import release_tensors

    tensors, _ = release_tensors("gemma-3-270m")
    q4k = [t for t in tensors.values() if t.type == "Q4_K"][:6]
    assert len(q4k) == 6
    same = total = 0
    for t in q4k:
        again = kquants.quantize(qgguf.dequantize(t), "Q4_K")
        same += int((again.data == t.data).all(axis=1).sum())
        total += len(t.data)
    assert same >= 0.995 * total, f"{same} of {total} super-blocks identical"
