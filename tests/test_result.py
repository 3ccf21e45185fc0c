"""QuantResult: saved and loaded bit for bit, applied to a fresh model it gives back the quantized model."""

import pytest
import torch
from tiny_models import tiny_gemma3, tiny_llama, tiny_opt

from qviz import awq, gptq, rtn
from qviz.quant import QuantSpec, dequantize
from qviz.result import QuantResult


def windows(n=4, seq=24):
    return torch.randint(0, 128, (n, seq), generator=torch.Generator().manual_seed(0))


def assert_same(a: QuantResult, b: QuantResult):
    assert (a.method, a.spec, a.options) == (b.method, b.spec, b.options)
    assert a.rows == b.rows and a.scale_groups == b.scale_groups
    assert set(a.linears) == set(b.linears) and set(a.float_tensors) == set(b.float_tensors)
    for name, qt in a.linears.items():
        other = b.linears[name]
        assert torch.equal(qt.codes, other.codes) and torch.equal(qt.scale, other.scale), name
        assert (
            torch.equal(qt.zero_point, other.zero_point) and qt.dtype == other.dtype and qt.spec == other.spec
        )
        assert (qt.g_idx is None and other.g_idx is None) or torch.equal(qt.g_idx, other.g_idx)
    for key, t in a.float_tensors.items():
        assert torch.equal(t, b.float_tensors[key]), key


@pytest.mark.parametrize(
    "run",
    [
        lambda m: rtn.quantize_model(m, QuantSpec(bits=3, group_size=16), windows(), progress=False),
        lambda m: gptq.quantize_model(
            m,
            QuantSpec(bits=4, symmetric=False, group_size=32),
            windows(),
            static_groups=False,
            progress=False,
        ),
        lambda m: awq.quantize_model(
            m,
            QuantSpec(bits=4, symmetric=False, group_size=32),
            windows(),
            awq.AWQConfig(n_grid=4),
            progress=False,
        ),
        lambda m: rtn.quantize_model(m, QuantSpec(bits=12, granularity="tensor"), progress=False),
    ],
    ids=["rtn-int3", "gptq-dynamic-groups", "awq", "rtn-int12-tensor"],
)
@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
def test_save_load_apply_round_trip(tmp_path, make, run):
    model = make()
    result = run(model)
    path = result.save(tmp_path / "r.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["r.safetensors"]  # no temporary file left
    back = QuantResult.load(path)
    assert_same(result, back)
    fresh = back.apply(make())  # the float model + the result = the quantized model, exactly
    ids = windows(n=2)
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, model(ids).logits)
    name = next(iter(result.linears))
    assert torch.equal(back.dequantized(name), dequantize(result.linears[name]))


def test_packed_codes_take_half_a_byte_at_4_bits(tmp_path):
    model = tiny_llama()
    result = rtn.quantize_model(model, QuantSpec(bits=4, group_size=32), progress=False)
    from safetensors import safe_open

    path = result.save(tmp_path / "r.safetensors")
    with safe_open(str(path), framework="pt") as f:
        for name, qt in result.linears.items():
            stored = f.get_tensor(f"linears.{name}.codes")
            assert stored.numel() * stored.element_size() == qt.codes.numel() // 2, name


def test_bad_files_and_models(tmp_path):
    model = tiny_llama()
    result = rtn.quantize_model(model, QuantSpec(bits=4, group_size=32), progress=False)
    with pytest.raises(ValueError, match="does not fit the model"):
        result.apply(tiny_opt())
    path = result.save(tmp_path / "r.safetensors")
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    with pytest.raises(ValueError, match=r"r\.safetensors.*delete it"):
        QuantResult.load(path)
    with pytest.raises(ValueError, match="not a readable qviz result"):
        QuantResult.load(tmp_path / "missing.safetensors")


def _rewrite(path, edit_meta=None, edit_tensors=None):
    """Rewrite a saved result as a damaged or lying copy would be."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["qviz"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    (edit_meta or (lambda m: None))(meta)
    (edit_tensors or (lambda t: None))(tensors)
    save_file(tensors, str(path), metadata={"qviz": json.dumps(meta)})


Q = "model.layers.0.self_attn.q_proj"


@pytest.mark.parametrize(
    "edit_meta, edit_tensors, message",
    [
        (None, lambda t: t.pop(f"linears.{Q}.scale"), rf"KeyError: 'linears.{Q}.scale'"),
        (None, lambda t: t[f"linears.{Q}.scale"].zero_(), rf"{Q}: scale must be positive and finite"),
        (lambda m: m["linears"][Q].__setitem__(2, 32), None, "32 4-bit values need 4 words"),
        (lambda m: m["linears"][Q].__setitem__(0, "int8"), None, "KeyError: 'int8'"),
        (lambda m: m.pop("rows"), None, "KeyError: 'rows'"),
        (lambda m: m["spec"].update(bits=40), None, "bits must be an integer from 2 to 16"),
    ],
    ids=["no-scale", "zero-scale", "lying-shape", "lying-dtype", "no-rows", "lying-spec"],
)
def test_lying_files_are_refused_with_the_file_and_the_fix(tmp_path, edit_meta, edit_tensors, message):
    result = rtn.quantize_model(tiny_llama(), QuantSpec(bits=4, group_size=32), progress=False)
    path = result.save(tmp_path / "r.safetensors")
    _rewrite(path, edit_meta, edit_tensors)
    with pytest.raises(
        ValueError, match=rf"r\.safetensors is not a readable qviz result .*{message}.*delete it"
    ):
        QuantResult.load(path)


def test_save_refuses_codes_it_cannot_store(tmp_path):
    """12-bit codes are stored as int32, unpacked: a zero point of 5000 would have been written as it was."""
    from dataclasses import replace

    result = rtn.quantize_model(tiny_llama(), QuantSpec(bits=12, symmetric=False), progress=False)
    qt = result.linears[Q]
    result.linears[Q] = replace(qt, zero_point=torch.full_like(qt.zero_point, 5000))
    with pytest.raises(ValueError, match=rf"{Q}: zero_point must lie in the code range \[0, 4095\]"):
        result.save(tmp_path / "r.safetensors")
    assert not any(tmp_path.iterdir())


def test_a_result_read_from_a_checkpoint_keeps_each_linears_spec(tmp_path):
    """Checkpoints store per-tensor qparams once per row: such a linear's spec is per-channel while the
    result's is per-tensor. save/load keep each linear's own spec (load gave every linear the result's)."""
    from qviz.export import load_quantized, save_quantized

    model = tiny_llama()
    rtn_result = rtn.quantize_model(model, QuantSpec(bits=4, granularity="tensor"), progress=False)
    result = load_quantized(save_quantized(model, rtn_result, tmp_path / "ckpt")).result
    assert result.spec.granularity == "tensor" and result.linears[Q].spec.granularity == "channel"
    back = QuantResult.load(result.save(tmp_path / "r.safetensors"))
    assert_same(result, back)
    fresh = back.apply(tiny_llama())
    with torch.no_grad():
        assert torch.equal(fresh(windows(n=2)).logits, model(windows(n=2)).logits)
