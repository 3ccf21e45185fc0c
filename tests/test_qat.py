"""QAT: the straight-through estimator's gradients by hand, a short seeded run on a tiny model that beats
rounding, and its result in the one result type every method returns."""

import copy

import pytest
import torch
from tiny_models import tiny_llama

from qviz import qat, rtn
from qviz.quant import QuantSpec, fake_quantize


def test_ste_gradients_match_the_hand_computed_ones():
    """s = 0.5, z = 0 on the 3-bit symmetric grid (codes −4 .. 3): W/s = −2, 0.4, 1.48, 6, so the codes are −2, 0,
    1 and 3 (clipped). ∂Q/∂W: 1, 1, 1, 0. ∂Q/∂s: code − W/s inside (0, −0.4, −0.48), qmax − z = 3 where clipped."""
    spec = QuantSpec(bits=3)
    W = torch.tensor([[-1.0, 0.2, 0.74, 3.0]], requires_grad=True)
    scale = torch.tensor([[0.5]], requires_grad=True)
    Q = qat.fake_quantize_ste(W, scale, torch.zeros(1, 1, dtype=torch.int32), spec)
    assert Q.tolist() == [[-1.0, 0.0, 0.5, 1.5]]
    Q.sum().backward()
    assert W.grad.tolist() == [[1.0, 1.0, 1.0, 0.0]]
    assert scale.grad.item() == pytest.approx(0 - 0.4 - 0.48 + 3, abs=1e-6)


@pytest.mark.parametrize(
    "spec", [QuantSpec(bits=4, group_size=16), QuantSpec(bits=3, symmetric=False, group_size=8)]
)
def test_ste_values_are_fake_quantize_bit_for_bit(spec):
    W = torch.randn(6, 32, generator=torch.Generator().manual_seed(0))
    from qviz.quant import choose_qparams

    scale, zero_point = choose_qparams(W, spec)
    assert torch.equal(
        qat.fake_quantize_ste(W, scale, zero_point, spec), fake_quantize(W, spec, scale, zero_point)
    )


def _kl(model, teacher, ids):
    with torch.no_grad():
        return qat._distillation_loss(model(input_ids=ids).logits, teacher(input_ids=ids).logits).item()


@pytest.mark.parametrize("learn_scales", [False, True])
def test_a_short_seeded_run_beats_rounding_and_returns_one_result(learn_scales):
    spec = QuantSpec(bits=2, symmetric=False, group_size=32)
    windows = torch.randint(2, 128, (8, 24), generator=torch.Generator().manual_seed(1))
    ids = torch.cat([torch.ones(8, 1, dtype=torch.long), windows], dim=1)  # BOS 1, as with_bos adds it
    teacher = tiny_llama(seed=0)

    rounded = copy.deepcopy(teacher)
    rtn.quantize_model(rounded, spec, progress=False)
    runs = []
    for _ in range(2):  # seeded: the same losses twice
        model = copy.deepcopy(teacher)
        result = qat.quantize_model(
            model,
            spec,
            windows,
            steps=40,
            lr=3e-3,
            learn_scales=learn_scales,
            teacher=teacher,
            progress=False,
        )
        runs.append(result.options["losses"])
    assert runs[0] == runs[1]
    assert _kl(model, teacher, ids) < 0.7 * _kl(rounded, teacher, ids)  # QAT closes > 30% of rounding's gap

    assert result.method == "qat" and len(result.linears) == 14 and len(result.rows) == 14
    again = result.apply(copy.deepcopy(teacher))  # a fresh float model + the result = the trained model
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, model(input_ids=ids).logits)
    qt = result.linears["model.layers.0.mlp.down_proj"]
    assert qt.codes.min() >= spec.qmin and qt.codes.max() <= spec.qmax
    assert all(p.requires_grad for p in model.parameters())  # as before training
    assert all(p.requires_grad for p in teacher.parameters())  # the teacher untouched
    assert not any("parametrizations" in n for n, _ in model.named_parameters())


def test_bad_input_is_refused_before_anything_changes():
    model = tiny_llama(seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    windows = torch.randint(2, 128, (2, 8))
    for kwargs, match in (
        (dict(spec=QuantSpec(bits=4, group_size=48)), "group_size"),
        (dict(spec=QuantSpec(bits=4), steps=0), "steps must be an integer >= 1"),
        (dict(spec=QuantSpec(bits=4), lr=0), "lr must be a positive number"),
    ):
        with pytest.raises(ValueError, match=match):
            qat.quantize_model(model, windows=windows, progress=False, **kwargs)
    with pytest.raises(ValueError, match="calibration windows"):
        qat.quantize_model(model, QuantSpec(bits=4), torch.zeros(0, 8, dtype=torch.long), progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
