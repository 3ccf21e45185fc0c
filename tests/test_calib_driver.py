import pytest
import torch
from tiny_models import tiny_gemma3, tiny_llama, tiny_opt

from qviz.arch import decoder_layers, family_of, linear_layers
from qviz.awq import AWQ, AWQConfig
from qviz.calib.capture import run_layer
from qviz.calib.driver import check_spec, quantize_layerwise
from qviz.quant import QuantSpec, dequantize, quantize
from qviz.result import QuantResult


def windows(n=5, seq=16, seed=1):
    return torch.randint(0, 128, (n, seq), generator=torch.Generator().manual_seed(seed))


class Recorder:
    """A method that quantizes nothing (or rounds with `spec`) and records what each layer received."""

    name, options = "recorder", {}

    def __init__(self, spec=None):
        self.spec, self.inputs, self.outputs = spec or QuantSpec(bits=8), [], []
        self.round = spec is not None

    def quantize_layer(self, layer, inputs, family):
        self.inputs.append(torch.cat(inputs.hidden))
        quantized = {}
        if self.round:
            for name, linear in linear_layers(layer, family).items():
                quantized[name] = quantize(linear.weight.data, self.spec)
                linear.weight.data = dequantize(quantized[name])
        self.outputs.append(torch.cat(run_layer(layer, inputs)))
        return [{"linear": "all", "tokens": inputs.n_tokens}], quantized


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_noop_driver_reproduces_hidden_states(make, batch_size):
    model, ids = make(), windows()
    method = Recorder()
    rows = quantize_layerwise(
        model, method, ids, batch_size=batch_size, bos_token_id=None, progress=False
    ).rows
    n_layers = len(decoder_layers(model))
    assert [r["layer"] for r in rows] == list(range(n_layers))
    assert all(r["tokens"] == 5 * 16 for r in rows)
    with torch.no_grad():
        hidden = model(
            ids, output_hidden_states=True
        ).hidden_states  # (embeddings, layer 1, ..., normed last)
    for index in range(n_layers):
        torch.testing.assert_close(method.inputs[index], hidden[index], rtol=1e-5, atol=1e-5)
    for index in range(n_layers - 1):
        torch.testing.assert_close(method.outputs[index], hidden[index + 1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.model.norm(method.outputs[-1]), hidden[-1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
def test_next_layer_sees_the_quantized_outputs(make):
    model, ids = make(), windows()
    method = Recorder(QuantSpec(bits=2))
    quantize_layerwise(model, method, ids, batch_size=2, bos_token_id=None, progress=False)
    with torch.no_grad():  # the finished (quantized) model: layer ℓ's inputs are what the driver fed it
        hidden = model(ids, output_hidden_states=True).hidden_states
    for index, received in enumerate(method.inputs):
        torch.testing.assert_close(received, hidden[index], rtol=1e-5, atol=1e-5)
    float_hidden = make()(ids, output_hidden_states=True).hidden_states
    assert not torch.allclose(method.inputs[1], float_hidden[1], atol=1e-3)  # rounding did change them


def test_n_layers_quantizes_only_the_first_layers():
    model, ids = tiny_llama(), windows()
    before = [
        lin.weight.clone()
        for layer in decoder_layers(model)
        for lin in linear_layers(layer, family_of(model)).values()
    ]
    method = Recorder(QuantSpec(bits=2))
    rows = quantize_layerwise(model, method, ids, bos_token_id=None, progress=False, n_layers=1).rows
    assert [r["layer"] for r in rows] == [0]
    after = [
        lin.weight
        for layer in decoder_layers(model)
        for lin in linear_layers(layer, family_of(model)).values()
    ]
    per_layer = len(after) // len(decoder_layers(model))
    assert all(
        not torch.equal(b, a) for b, a in zip(before[:per_layer], after[:per_layer])
    )  # layer 0 rounded
    assert all(torch.equal(b, a) for b, a in zip(before[per_layer:], after[per_layer:]))  # the rest float
    for bad in (0, len(decoder_layers(model)) + 1, 1.5, True):
        with pytest.raises(ValueError, match="n_layers must be an integer from 1 to"):
            quantize_layerwise(model, Recorder(), ids, progress=False, n_layers=bad)


def test_bad_inputs():
    model = tiny_llama()
    for bad in (
        [],
        torch.zeros(0, 4, dtype=torch.long),
        torch.zeros(2, 4),
        torch.zeros(2, 2, 2, dtype=torch.long),
    ):
        with pytest.raises(ValueError, match="windows"):
            quantize_layerwise(model, Recorder(), bad, progress=False)
    with pytest.raises(ValueError, match=r"layer 0 self_attn.q_proj \(64, 64\): group_size 48"):
        check_spec(model, QuantSpec(bits=4, group_size=48))


def test_bos_is_prepended_like_eval():
    model, ids = tiny_llama(), windows(n=2)
    method = Recorder()
    quantize_layerwise(model, method, ids, progress=False)  # "auto": config.bos_token_id (1 here)
    with_bos = torch.cat([torch.full((2, 1), model.config.bos_token_id), ids], dim=1)
    with torch.no_grad():
        hidden = model(with_bos, output_hidden_states=True).hidden_states
    torch.testing.assert_close(method.inputs[1], hidden[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3, tiny_opt], ids=["llama", "gemma3", "opt"])
def test_result_names_every_quantized_linear_and_every_changed_tensor(make):
    """The driver's QuantResult: the codes of every linear under its qualified name, and exactly the other
    tensors the method changed (AWQ folds 1/s into norms and biases; RTN changes nothing else)."""
    model, ids = make(), windows()
    before = {k: t.clone() for k, t in model.state_dict().items()}
    result = quantize_layerwise(model, Recorder(QuantSpec(bits=4, group_size=16)), ids, progress=False)
    assert isinstance(result, QuantResult) and result.method == "recorder" and not result.float_tensors
    family = family_of(model)
    names = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "layers." in n}
    assert set(result.linears) == names
    state = model.state_dict()
    for name, qt in result.linears.items():
        assert torch.equal(dequantize(qt), state[f"{name}.weight"])

    model = make()
    result = quantize_layerwise(
        model,
        AWQ(QuantSpec(bits=4, symmetric=False, group_size=16), AWQConfig(n_grid=4)),
        ids,
        progress=False,
    )
    state = model.state_dict()
    weights = {f"{n}.weight" for n in result.linears}
    changed = {k for k, t in state.items() if k not in weights and not torch.equal(t, before[k])}
    assert set(result.float_tensors) == changed and changed  # the norms (and biases) AWQ folded into
    assert all("norm" in k or "bias" in k or "layer_norm" in k for k in changed), changed
    for key, t in result.float_tensors.items():
        assert torch.equal(t, state[key])
    assert len(linear_layers(decoder_layers(model)[0], family)) * len(decoder_layers(model)) == len(
        result.linears
    )
