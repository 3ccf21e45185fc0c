"""Quantization-aware training (QAT): keep training the weights *through* the rounding, so that the rounded model
is the one that gets good, instead of rounding a model that was trained without it (PTQ: RTN, GPTQ, AWQ).

    result = quantize_model(model, QuantSpec(bits=3, group_size=64), windows, steps=200)

The forward pass of every decoder linear computes with its weight fake-quantized on `spec`'s grid,

    Q(W) = s · (clamp(round(W / s) + z, qmin, qmax) − z)

Rounding has zero gradient almost everywhere, so training through it needs the **straight-through estimator**
(STE; Bengio et al. 2013, as QAT uses it): the backward pass treats round() as the identity. With the clamp's
own gradient that gives ∂Q/∂W = 1 where W lies inside the grid's range and 0 where its code was clipped
(`fake_quantize_ste`, the one differentiable rounding step).

Scales: by default each step takes the current W's min-max qparams (`qviz.quant.choose_qparams`, as RTN would),
not trained; with learn_scales=True each group's scale s is a parameter too, initialised the same way, with the
gradient the STE gives it: ∂Q/∂s = (code − z) − W/s inside the range, and (qmin − z) or (qmax − z) where clipped
(LSQ, Esser et al. 2020; zero points stay at their initial values).

Loss: distillation from the float model (LLM-QAT, Liu et al. 2023): the mean over calibration tokens of
KL(p_float ‖ p_quantized), the float model's next-token distribution against the quantized model's, on
calibration text only. Only the linears' weights (and scales) train; embeddings, norms and lm_head stay as they
are. At the end each linear's codes are taken with `qviz.quant.quantize` from the trained weight and its final
qparams, and returned as a `QuantResult`, like every other method's: packing, checkpoints and the notebooks
take it as they take GPTQ's.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from .arch import decoder_layers, family_of, linear_layers
from .calib.report import linear_report
from .data import with_bos
from .quant import QuantSpec, _grouped, choose_qparams, dequantize, quantize
from .result import QuantResult

__all__ = ["fake_quantize_ste", "quantize_model"]


class _RoundSTE(torch.autograd.Function):
    """torch.round going forward (halves to even, as `qviz.quant.round_to_grid`); the identity going back."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def fake_quantize_ste(W: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec):
    """Q(W) on `spec`'s groups with qparams (rows, n_groups), differentiable in W and scale by the straight-
    through estimator. Its values equal `qviz.quant.fake_quantize(W, spec, scale, zero_point)` bit for bit
    (the same operations in the same order); only the gradient is added."""
    g = _grouped(W, spec)  # (rows, n_groups, group_len) float32
    s, z = scale.unsqueeze(-1), zero_point.unsqueeze(-1).to(g.dtype)
    codes = torch.clamp(_RoundSTE.apply(g / s) + z, spec.qmin, spec.qmax)
    return ((codes - z) * s).reshape(W.shape).to(W.dtype)


class _FakeQuantized(nn.Module):
    """A parametrization of a linear's weight: what the layer computes with is Q(W)."""

    def __init__(self, W: torch.Tensor, spec: QuantSpec, learn_scales: bool):
        super().__init__()
        self.spec = spec
        scale, zero_point = choose_qparams(W.detach(), spec)
        self.scale = nn.Parameter(scale) if learn_scales else None
        self.register_buffer("zero_point", zero_point)

    def qparams(self, W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.scale is None:
            return choose_qparams(W.detach(), self.spec)
        return self.scale.clamp(min=torch.finfo(torch.float32).tiny), self.zero_point

    def forward(self, W):
        return fake_quantize_ste(W, *self.qparams(W), self.spec)


def _distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(p_teacher ‖ p_student), in nats."""
    log_p = F.log_softmax(teacher_logits.float(), dim=-1)
    log_q = F.log_softmax(student_logits.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def quantize_model(
    model: nn.Module,
    spec: QuantSpec,
    windows: torch.Tensor,
    *,
    steps: int = 100,
    lr: float = 1e-5,
    batch_size: int = 4,
    learn_scales: bool = False,
    teacher: nn.Module | None = None,
    seed: int = 0,
    bos_token_id: int | str | None = "auto",
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> QuantResult:
    """QAT on every linear inside the decoder layers of `model`, in place: `steps` Adam steps (learning rate
    `lr`) on batches of `batch_size` calibration windows (n, seq) token ids, taken in a seeded shuffled order,
    each prefixed with BOS (`qviz.data.with_bos`). teacher: the float model to distil from (default: a copy of
    `model` made before training). on_step(step, loss): called after every step (a live loss curve).

    Returns a `QuantResult` ("qat") whose rows hold each linear's weight error against its float weight, and whose
    options hold the settings, the loss of every step and the seconds it took. Raises ValueError before training
    for a spec some linear cannot take (e.g. a group size that does not divide its rows) or no windows.
    """
    for name, value, low in (("steps", steps, 1), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    ids, _ = with_bos(model, windows, bos_token_id, "calibration windows")
    if ids.shape[0] == 0 or ids.shape[1] < 2:
        raise ValueError("QAT needs calibration windows of at least one token: got none")
    family = family_of(model)
    names = {module: name for name, module in model.named_modules()}
    linears = [
        (index, short, linear)
        for index, layer in enumerate(decoder_layers(model))
        for short, linear in linear_layers(layer, family).items()
    ]
    floats = {}
    for _, _, linear in linears:  # choose_qparams refuses a spec the weight cannot take: before any change
        choose_qparams(linear.weight.detach(), spec)
        floats[linear] = linear.weight.detach().clone()
    teacher = teacher if teacher is not None else copy.deepcopy(model)
    device = next(model.parameters()).device

    was_training, requires = model.training, {p: p.requires_grad for p in model.parameters()}
    model.requires_grad_(False)
    for _, _, linear in linears:
        parametrize.register_parametrization(
            linear, "weight", _FakeQuantized(linear.weight, spec, learn_scales)
        )
        linear.parametrizations.weight.original.requires_grad_(True)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trained, lr=lr)
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))
    losses, start = [], time.perf_counter()
    try:
        model.train()
        bar = tqdm(range(steps), desc=f"QAT {spec.label}", unit="step", disable=not progress)
        for step in bar:
            rows = order[(torch.arange(batch_size) + step * batch_size) % len(ids)]
            batch = ids[rows].to(device)
            with torch.no_grad():
                target = teacher(input_ids=batch).logits
            loss = _distillation_loss(model(input_ids=batch).logits, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(kl=f"{losses[-1]:.4f}")
            if on_step is not None:
                on_step(step, losses[-1])
    finally:
        model.train(was_training)
        result = QuantResult("qat", spec)
        with torch.no_grad():
            for index, short, linear in linears:
                fq = linear.parametrizations.weight[0]
                W = linear.parametrizations.weight.original.detach()
                scale, zero_point = fq.qparams(W)
                parametrize.remove_parametrizations(linear, "weight", leave_parametrized=False)
                qt = quantize(W, spec, scale.detach(), zero_point)
                linear.weight.copy_(dequantize(qt))
                result.linears[names[linear]] = qt
                result.rows.append({"layer": index, **linear_report(short, floats[linear], linear.weight)})
        for p, flag in requires.items():
            p.requires_grad_(flag)
    result.options = dict(
        steps=steps, lr=lr, batch_size=batch_size, learn_scales=learn_scales, seed=seed, losses=losses,
        seconds=time.perf_counter() - start,
    )  # fmt: skip
    return result
