"""QuantLinear: the reference forward equals fake quantization exactly; every kernel equals the reference.

The Triton kernel runs on CPU tensors under Triton's interpreter, which must be switched on before triton is
imported, so this module sets TRITON_INTERPRET=1 at import. In a full test run, tests that ran earlier in the same
process (building transformers models) leave the interpreter unable to launch kernels ("Cannot call @triton.jit'd
outside of the scope of a kernel"), so the Triton tests run in a child process of their own:
`test_triton_kernels_in_a_clean_process` starts it and fails with the child's output if any Triton test fails.
"""

import os
import subprocess
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from tiny_models import tiny_gemma3, tiny_llama, tiny_opt  # noqa: E402
from torch import nn  # noqa: E402

from qviz import awq, gptq, rtn  # noqa: E402
from qviz.qlinear import QuantLinear, quantize_linears, triton_available, weight_bytes  # noqa: E402
from qviz.quant import QuantizedTensor, QuantSpec, fake_quantize, quantize  # noqa: E402
from qviz.result import QuantResult  # noqa: E402

IN_TRITON_CHILD = os.environ.get("QVIZ_TRITON_CHILD") == "1"
needs_triton = pytest.mark.skipif(
    not (IN_TRITON_CHILD and triton_available() and os.environ.get("TRITON_INTERPRET") == "1"),
    reason="runs in the child process started by test_triton_kernels_in_a_clean_process",
)


@pytest.mark.skipif(
    IN_TRITON_CHILD or not triton_available(), reason="triton is not installed: pip install 'qviz[gpu]'"
)
def test_triton_kernels_in_a_clean_process():
    env = {**os.environ, "TRITON_INTERPRET": "1", "QVIZ_TRITON_CHILD": "1"}
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "triton and not clean_process", "-m", "not slow"],
        env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert child.returncode == 0, child.stdout[-4000:] + child.stderr[-2000:]
    assert " passed" in child.stdout and "skipped" not in child.stdout.splitlines()[-1], child.stdout[-2000:]


def _linear(k=256, n=64, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(k, n, bias=bias)


SPECS = [
    pytest.param(QuantSpec(bits=4, group_size=64), id="int4-sym-g64"),
    pytest.param(QuantSpec(bits=4, symmetric=False, group_size=32), id="int4-asym-g32"),
    pytest.param(QuantSpec(bits=4, symmetric=False, group_size=128), id="int4-asym-g128"),
]


@pytest.mark.parametrize(
    "spec",
    SPECS
    + [
        pytest.param(QuantSpec(bits=b, symmetric=s), id=f"int{b}-{'sym' if s else 'asym'}-channel")
        for b in (2, 3, 4, 8)
        for s in (True, False)
    ]
    + [pytest.param(QuantSpec(bits=4, granularity="tensor"), id="int4-tensor")],
)
def test_reference_forward_equals_fake_quantization_exactly(spec):
    lin = _linear()
    ql = QuantLinear.from_linear(lin, spec, backend="reference")
    x = torch.randn(2, 5, 256)
    expected = nn.functional.linear(x, fake_quantize(lin.weight.detach(), spec), lin.bias)
    assert torch.equal(ql(x), expected)


def test_holds_real_packed_bytes():
    ql = QuantLinear.from_linear(_linear(bias=False), QuantSpec(bits=4, group_size=64), backend="reference")
    buffers = dict(ql.named_buffers())
    assert buffers["qweight"].dtype == torch.int32 and buffers["qweight"].shape == (256 // 8, 64)
    assert set(buffers) == {"qweight", "scales", "zero_point"}
    # 4 bits a weight + one float32 scale and one uint8 zero point per group of 64
    assert weight_bytes(ql) == 256 * 64 // 2 + 4 * 64 * 4 + 4 * 64


def test_quantized_round_trip_and_state_dict():
    spec = QuantSpec(bits=4, symmetric=False, group_size=32)
    lin = _linear()
    qt = quantize(lin.weight.detach(), spec)
    ql = QuantLinear.from_quantized(qt, lin.bias)
    back = ql.quantized()
    assert torch.equal(back.codes, qt.codes) and torch.equal(back.zero_point, qt.zero_point)
    assert torch.equal(back.scale, qt.scale)
    empty = QuantLinear(256, 64, bits=4, group_size=32, symmetric=False, scale_dtype=torch.float32)
    empty.load_state_dict(ql.state_dict())
    x = torch.randn(3, 256)
    assert torch.equal(empty(x), ql(x))


def _check_against_reference(ql, x, backend, atol, rtol=0.0):
    ql.backend = "reference"
    ref = ql(x.float()).float()
    ql.backend = backend
    y = ql(x)
    assert y.shape == ref.shape and y.dtype == x.dtype
    torch.testing.assert_close(y.float(), ref, atol=atol, rtol=rtol)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize(
    "dtype,atol",
    [(torch.float32, 1e-4), (torch.float16, 5e-2), (torch.bfloat16, 5e-2)],
    ids=["fp32", "fp16", "bf16"],
)
def test_torch_int4_matches_reference(spec, dtype, atol):
    # tinygemm on CPU: bf16 is what DESIGN.md promised; torch 2.13 also runs fp16 and fp32 (measured here).
    ql = QuantLinear.from_linear(_linear(), spec, backend="torch_int4")
    x = torch.randn(2, 7, 256).to(dtype) / 4
    _check_against_reference(ql, x, "torch_int4", atol=atol, rtol=2e-2 if dtype != torch.float32 else 0.0)
    assert "int4_packed" in dict(ql.named_buffers())  # the tinygemm copy is held, and counted


@needs_triton
@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-4), (torch.float16, 2e-2)], ids=["fp32", "fp16"])
def test_triton_matches_reference(spec, dtype, atol):
    if "qviz.kernels.triton_w4a16" in sys.modules and not os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the Triton kernel was imported before TRITON_INTERPRET=1 was set")
    ql = QuantLinear.from_linear(_linear(k=256, n=80), spec, backend="triton")  # 80: a partial column tile
    x = torch.randn(3, 5, 256).to(dtype) / 4  # M = 15: a partial row tile
    _check_against_reference(ql, x, "triton", atol=atol, rtol=1e-2 if dtype == torch.float16 else 0.0)


@needs_triton
@pytest.mark.parametrize("split_k", [2, 3])
def test_triton_split_k_sums_slices_of_k(split_k):
    from qviz.kernels.triton_w4a16 import w4a16_matmul

    ql = QuantLinear.from_linear(_linear(k=320, n=48), QuantSpec(bits=4, symmetric=False, group_size=64))
    x = torch.randn(3, 320)
    y = w4a16_matmul(
        x, ql.qweight, ql.scales, ql.zero_point, 64, split_k=split_k
    )  # 5 K blocks: uneven slices
    torch.testing.assert_close(y, x @ ql.dequantized_weight().T, atol=1e-4, rtol=0)


@needs_triton
def test_triton_follows_act_order_g_idx():
    spec = QuantSpec(bits=4, symmetric=False, group_size=32)
    lin = _linear()
    plain = quantize(lin.weight.detach(), spec)
    g_idx = (torch.randperm(256, generator=torch.Generator().manual_seed(0)) // 32).int()
    qt = QuantizedTensor(plain.codes, plain.scale, plain.zero_point, spec, plain.dtype, g_idx)
    ql = QuantLinear.from_quantized(qt, lin.bias, backend="triton")
    w = (qt.codes - qt.zero_point[:, g_idx.long()]) * qt.scale[:, g_idx.long()]
    x = torch.randn(4, 256)
    torch.testing.assert_close(ql(x), nn.functional.linear(x, w, lin.bias), atol=1e-4, rtol=0)
    _check_against_reference(ql, x, "triton", atol=1e-4)


def test_backend_choice_and_errors():
    ql = QuantLinear.from_linear(_linear(), QuantSpec(bits=4, group_size=64))
    assert ql.backend == "auto" and ql.resolved_backend(torch.zeros(1, 256)) == "reference"  # CPU
    with pytest.raises(ValueError, match="backend must be one of"):
        ql.backend = "cuda"
    ql8 = QuantLinear.from_linear(_linear(), QuantSpec(bits=8))
    with pytest.raises(ValueError, match="4-bit weights only"):
        ql8.backend = "torch_int4"
    with pytest.raises(ValueError, match="group_size in"):
        QuantLinear.from_linear(_linear(k=512), QuantSpec(bits=4), backend="torch_int4")  # per-channel: G = K
    with pytest.raises(ValueError, match="out_features divisible by 16"):
        QuantLinear.from_linear(_linear(n=24), QuantSpec(bits=4, group_size=64), backend="torch_int4")


def tiny_decoder_result(spec, layers=(0, 1)):
    """A torch.nn model with two 'decoder layers' (a ModuleList) and an lm_head outside it, and a hand-made
    QuantResult (RTN codes) for the linears of `layers`."""

    class TinyDecoder(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.layers = nn.ModuleList(
                nn.ModuleDict({"up": nn.Linear(128, 256), "down": nn.Linear(256, 128, bias=False)})
                for _ in range(2)
            )
            self.lm_head = nn.Linear(128, 64, bias=False)

        def forward(self, x):
            for layer in self.layers:
                x = x + layer["down"](torch.relu(layer["up"](x)))
            return self.lm_head(x)

    model = TinyDecoder()
    linears = {
        f"layers.{i}.{n}": quantize(model.layers[i][n].weight.detach(), spec)
        for i in layers
        for n in ("up", "down")
    }
    return model, QuantResult("rtn", spec, linears)


def test_quantize_linears_swaps_the_results_linears_and_shrinks_bytes():
    spec = QuantSpec(bits=4, group_size=128)
    model, result = tiny_decoder_result(spec)
    fake, _ = tiny_decoder_result(spec)
    result.apply(fake)
    linear_bytes = sum(m.weight.numel() * 4 for m in model.layers.modules() if isinstance(m, nn.Linear))
    before = weight_bytes(model)
    quantize_linears(model, result, backend="reference")
    assert isinstance(model.layers[0]["up"], QuantLinear) and type(model.lm_head) is nn.Linear
    x = torch.randn(3, 128)
    assert torch.equal(model(x), fake(x))
    # float32 weights (32 bits) -> 4-bit codes + a float32 scale per 128 weights (4.25 bits): ~7.5x fewer bytes
    saved = before - weight_bytes(model)
    assert saved == pytest.approx(linear_bytes * (1 - 4.25 / 32), rel=0.01)


def test_quantize_linears_takes_only_a_fitting_result():
    spec = QuantSpec(bits=4, symmetric=False, group_size=64)
    model, result = tiny_decoder_result(spec, layers=(1,))
    quantize_linears(model, result)
    assert isinstance(model.layers[1]["up"], QuantLinear) and type(model.layers[0]["up"]) is nn.Linear
    with pytest.raises(ValueError, match="not an nn.Linear"):
        quantize_linears(model, result)  # already packed
    with pytest.raises(ValueError, match="QuantResult"):
        quantize_linears(model, result.linears)
    other = QuantResult("rtn", spec, {"layers.7.up": next(iter(result.linears.values()))})
    with pytest.raises(ValueError, match="does not have"):
        quantize_linears(model, other)


def _windows(n=4, seq=24):
    return torch.randint(0, 128, (n, seq), generator=torch.Generator().manual_seed(0))


_METHODS = {
    "rtn": (QuantSpec(bits=4, group_size=32), lambda m, s: rtn.quantize_model(m, s, progress=False)),
    "gptq-natural-asym": (
        QuantSpec(bits=4, symmetric=False, group_size=32),
        lambda m, s: gptq.quantize_model(m, s, _windows(), act_order=False, progress=False),
    ),
    "gptq-actorder-sym": (
        QuantSpec(bits=4, group_size=32),
        lambda m, s: gptq.quantize_model(m, s, _windows(), progress=False),
    ),
    "gptq-actorder-dynamic-asym": (
        QuantSpec(bits=3, symmetric=False, group_size=32),
        lambda m, s: gptq.quantize_model(m, s, _windows(), static_groups=False, progress=False),
    ),
    "awq": (
        QuantSpec(bits=4, symmetric=False, group_size=32),
        lambda m, s: awq.quantize_model(m, s, _windows(), awq.AWQConfig(n_grid=5), progress=False),
    ),
}


@pytest.mark.parametrize("method", list(_METHODS))
@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3, tiny_opt], ids=["llama", "gemma3", "opt"])
def test_packed_model_equals_the_fake_quantized_model(make, method):
    """Every method's result, packed into a FRESH float model, computes exactly (torch.equal, float32) the
    logits of the model the method quantized in place: same codes, same scales, same folded norms."""
    spec, run = _METHODS[method]
    fake = make()
    result = run(fake, spec)
    packed = quantize_linears(make(), result, backend="reference")
    n_linears = sum(isinstance(m, QuantLinear) for m in packed.modules())
    assert n_linears == len(result.linears) > 0
    if method == "gptq-actorder-dynamic-asym":
        assert any(qt.g_idx is not None for qt in result.linears.values())
    ids = _windows(n=2)
    with torch.no_grad():
        assert torch.equal(packed(ids).logits, fake(ids).logits)


@pytest.mark.slow
def test_real_model_packed_equals_fake_quantized_for_every_method(smollm2):
    """SmolLM2 (the first 2 of its 30 layers, to keep the test short): RTN, GPTQ (act-order) and AWQ results
    packed into a fresh copy compute the fake-quantized model's logits exactly."""
    from qviz.data import calib_windows
    from qviz.models import load_model

    _, tok = smollm2
    calib = calib_windows(tok, seqlen=64, n=4)
    text = "The history of the printing press begins in the fifteenth century, when movable type " * 8
    ids = tok(text, return_tensors="pt").input_ids[:, :96]
    spec = QuantSpec(bits=4, symmetric=False, group_size=64)  # 576 = 9 x 64
    runs = {
        "rtn": lambda m: rtn.quantize_model(m, spec, n_layers=2, progress=False),
        "gptq": lambda m: gptq.quantize_model(m, spec, calib, n_layers=2, progress=False),
        "awq": lambda m: awq.quantize_model(
            m, spec, calib, awq.AWQConfig(n_grid=5), n_layers=2, progress=False
        ),
    }
    for name, run in runs.items():
        fake, _ = load_model("smollm2-135m")
        result = run(fake)
        packed = quantize_linears(load_model("smollm2-135m")[0], result, backend="reference")
        assert sum(isinstance(m, QuantLinear) for m in packed.modules()) == 2 * 7, name
        with torch.no_grad():
            assert torch.equal(packed(ids).logits, fake(ids).logits), name
        assert weight_bytes(packed) < weight_bytes(fake)
        del fake, packed


def test_a_zero_point_of_300_is_refused_not_wrapped_to_44():
    """QuantLinear keeps zero points in uint8: copy_ of 300 stores 44 without a word."""
    spec = QuantSpec(bits=4, symmetric=False, group_size=64)
    qt = quantize(_linear().weight.detach(), spec)
    bad = QuantizedTensor(qt.codes, qt.scale, torch.full_like(qt.zero_point, 300), spec)
    with pytest.raises(ValueError, match=r"zero_point must lie in the code range \[0, 15\] .* \[300, 300\]"):
        QuantLinear.from_quantized(bad)
    layer = QuantLinear.from_quantized(qt)
    state = {**layer.state_dict(), "zero_point": torch.full(layer.zero_point.shape, 300)}
    with pytest.raises(
        ValueError, match=r"zero_point: a 4-bit QuantLinear stores .* \[0, 15\], got .* \[300, 300\]"
    ):
        layer.load_state_dict(state)
    assert torch.equal(layer.zero_point.T.int(), qt.zero_point)  # unchanged


def test_what_its_buffers_cannot_hold_is_refused():
    with pytest.raises(ValueError, match="2- to 8-bit codes .* got bits=12"):
        QuantLinear.from_linear(_linear(), QuantSpec(bits=12))
    qt = quantize(_linear().weight.detach() * 1e8, QuantSpec(bits=4, group_size=64))  # scales ~1e6
    with pytest.raises(ValueError, match="do not fit torch.float16"):
        QuantLinear.from_quantized(qt, scale_dtype=torch.float16)
    assert torch.equal(QuantLinear.from_quantized(qt).quantized().scale, qt.scale)  # float32 keeps them


def test_quantize_linears_refuses_a_result_of_another_shape():
    spec = QuantSpec(bits=4, group_size=64)
    model, result = tiny_decoder_result(spec)
    other = QuantResult(
        "rtn", spec, {"layers.0.up": result.linears["layers.0.down"]}
    )  # (128, 256) vs (256, 128)
    with pytest.raises(
        ValueError, match=r"layers.0.up: the result holds a \(128, 256\) weight, .* \(256, 128\)"
    ):
        quantize_linears(model, other)
    lying = QuantResult("awq", spec, dict(result.linears), {"layers.0.up.bias": torch.zeros(3)})
    with pytest.raises(
        ValueError, match=r"layers.0.up.bias: the result holds a \(3,\) tensor, the model has \(256,\)"
    ):
        quantize_linears(model, lying)
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))  # nothing swapped
