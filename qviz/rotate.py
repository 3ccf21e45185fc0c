"""Rotations that make W4A4 work: the idea of QuaRot (Ashkboos et al. 2024) and SpinQuant (Liu et al. 2024).

For any orthogonal R (R·Rᵀ = I) a linear computes the same output from rotated inputs and rotated weights:

    y = x·Wᵀ = x·R·Rᵀ·Wᵀ = (x·R)·(W·R)ᵀ        x: (tokens, in_features), W: (out_features, in_features),
                                                R: (in_features, in_features)

Why rotate: an outlier channel (one column of x far larger than the rest) sets a per-token or per-tensor
activation grid and leaves every other channel on a few levels. A rotation mixes the channels, spreading the
outlier's energy over all of them. A Hadamard matrix does it best: it maps a one-hot vector e_j to a vector
whose n entries are all ±1/√n, so max/rms falls from √n to 1 (`outlier_stats`). SmoothQuant (`qviz.smooth`)
moves the outlier into the weights instead; a rotation removes it from both, which is what 4-bit
activations need. W·R is quantized as usual (RTN, GPTQ).

The matrices: `hadamard(n)` (Sylvester's construction, n a power of two), `block_hadamard(n, block)` for the
widths that are not (SmolLM2's 576 = 9 × 64, an MLP width of 1536 = 3 × 512; a block only mixes the channels
inside it), `random_orthogonal(n, seed)` (the random rotations SpinQuant starts from) and `rotation(n, kind)`,
which picks one.

QuaRot proper fuses R into the weights around the residual stream (embeddings, every linear that reads or
writes it, the head), so that the hidden state itself lives rotated and costs nothing at inference. That
needs every RMSNorm on the stream to commute with R: RMS(x·R) = RMS(x), but a learned per-channel weight
does not (diag(w)·R ≠ R·diag(w) unless w is uniform), so QuaRot first folds each norm's weight into the
linears it feeds. Gemma 3 cannot be handled so: its post_attention_layernorm and post_feedforward_layernorm
apply learned weights to the *outputs* of attention and MLP before they join the residual stream, and no
linear follows them to absorb the weight. This teaching module therefore rotates *online, per linear*
(`rotate_linears`): W ← W·R, and a forward pre-hook turns the linear's input x into x·R. It works on every
family in `qviz.arch`, at the cost of one (tokens × n) · (n × n) product per linear and call (QuaRot's online
Hadamards use a fast Walsh–Hadamard transform, O(n log n) per token, instead).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .arch import decoder_layers, family_of, linear_layers

__all__ = [
    "RotatedLinears",
    "block_hadamard",
    "hadamard",
    "outlier_stats",
    "random_orthogonal",
    "rotate_linears",
    "rotation",
]

KINDS = ("hadamard", "random")


def _is_power_of_two(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1 and n & (n - 1) == 0


def hadamard(n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The normalized Walsh–Hadamard matrix H_n (n × n, entries ±1/√n, H·Hᵀ = I) for n a power of two,
    by Sylvester's construction H_2k = [[H_k, H_k], [H_k, −H_k]]:

    >>> (hadamard(4) * 2).int().tolist()  # √4 = 2
    [[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]]
    """
    if not _is_power_of_two(n):
        raise ValueError(f"hadamard(n) needs n a power of two (1, 2, 4, ...), got {n!r}: see block_hadamard")
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return (H / math.sqrt(n)).to(dtype)


def block_hadamard(n: int, block: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Block-diagonal n × n orthogonal matrix with n/block copies of hadamard(block) on its diagonal, for
    `block` a power of two dividing n (576 = 9 × 64: nine 64 × 64 Hadamards)."""
    if not _is_power_of_two(block) or not isinstance(n, int) or n < 1 or n % block:
        raise ValueError(f"block must be a power of two that divides n, got n={n!r}, block={block!r}")
    return torch.block_diag(*[hadamard(block, torch.float64)] * (n // block)).to(dtype)


def random_orthogonal(n: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A random n × n orthogonal matrix, the same for the same seed: Q of the QR decomposition of a Gaussian
    matrix G = Q·R', with column j of Q multiplied by sign(R'_jj), which makes Q uniformly (Haar) distributed
    instead of biased by the sign convention of the QR routine."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    G = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    Q, R = torch.linalg.qr(G)
    return (Q * torch.sign(torch.diagonal(R))).to(dtype)


def rotation(
    n: int, kind: str = "hadamard", seed: int = 0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """An n × n orthogonal matrix: kind="hadamard" the block Hadamard with the largest power-of-two block that
    divides n (576 -> 64, 640 -> 128, 1024 -> one 1024 × 1024 Hadamard); kind="random" random_orthogonal(n, seed).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "random":
        return random_orthogonal(n, seed, dtype)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    block = n & -n  # the largest power of two dividing n
    if block == 1:
        raise ValueError(f"n={n} is odd, so no Hadamard block larger than 1 divides it: use kind='random'")
    return block_hadamard(n, block, dtype)


def outlier_stats(x: torch.Tensor) -> dict[str, float]:
    """How outlier-dominated a tensor is, over all its values: max_abs = max|x|, rms = √mean(x²), and
    max_over_rms = max_abs / rms (1 when every value has the same magnitude, √n for a one-hot vector of n).
    A b-bit absmax grid puts the typical value max_over_rms times below its largest level."""
    x = x.detach().double()
    max_abs, rms = x.abs().max().item(), x.pow(2).mean().sqrt().item()
    return {"max_abs": max_abs, "rms": rms, "max_over_rms": max_abs / rms if rms > 0 else math.nan}


class RotatedLinears:
    """What `rotate_linears` changed: each linear's original weight (a copy: the linears' size again) and its
    pre-hook. `restore()` puts the weights back bit for bit and removes the hooks; as a context manager,
    leaving the `with` block restores."""

    def __init__(
        self, weights: dict[nn.Linear, torch.Tensor], handles: list, rotations: dict[int, torch.Tensor]
    ):
        self.weights, self.handles = weights, handles
        self.rotations = rotations  # in_features -> R (float64, CPU), one per width: q/k/v share theirs

    @torch.no_grad()
    def restore(self) -> None:
        for handle in self.handles:
            handle.remove()
        for linear, W in self.weights.items():
            linear.weight.copy_(W)
        self.weights, self.handles = {}, []

    def __enter__(self) -> RotatedLinears:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def _rotate_input(R: torch.Tensor, act_quant: Callable[[torch.Tensor], torch.Tensor] | None):
    def hook(module, args):
        x = args[0] @ R.to(args[0].dtype)  # a no-op cast unless x comes in another dtype than W
        return (x if act_quant is None else act_quant(x), *args[1:])

    return hook


@torch.no_grad()
def rotate_linears(
    model: nn.Module,
    kind: str = "hadamard",
    seed: int = 0,
    act_quant: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> RotatedLinears:
    """Rotate every linear of every decoder layer online, in place: W ← W·R (R = rotation(in_features, kind,
    seed), one per width) and a forward pre-hook x ← x·R, so the float model computes the same logits.

    act_quant: applied to the rotated input inside the same hook (e.g. per-token INT4 fake quantization), so
    it sees x·R. Forward pre-hooks run in the order they were registered: one registered on a linear *after*
    this call (`qviz.act.quantize_activations` entered inside the rotated block) also sees x·R, one registered
    *before* (quantize_activations entered first) sees the unrotated x. Passing act_quant here avoids
    depending on that order. Quantize the rotated weights W·R as usual while rotated.

    Returns a `RotatedLinears` handle; `.restore()`, or the end of a `with` block, undoes everything exactly:

    >>> # with rotate_linears(model, act_quant=lambda x: fake_quantize_act(x, ActSpec("int4", "per-token"))):
    >>> #     logits = model(input_ids=ids).logits
    """
    family, weights, handles, rotations, hook_R = family_of(model), {}, [], {}, {}
    try:
        for layer in decoder_layers(model):
            for linear in linear_layers(layer, family).values():
                W, n = linear.weight, linear.in_features
                if n not in rotations:
                    rotations[n] = rotation(n, kind, seed, torch.float64)  # on the CPU (MPS has no float64)
                    hook_R[n] = rotations[n].to(device=W.device, dtype=W.dtype)  # cast once per width
                weights[linear] = W.detach().clone()
                W.copy_(W.detach().cpu().double() @ rotations[n])  # float64: a float32 W·R rounded once
                handles.append(linear.register_forward_pre_hook(_rotate_input(hook_R[n], act_quant)))
    except BaseException:
        RotatedLinears(weights, handles, rotations).restore()
        raise
    return RotatedLinears(weights, handles, rotations)
