"""A Linear layer that really holds packed low-bit weights, and runs them.

Until this module a "quantized" model computes with fake-quantized floats: every weight was rounded to the
grid, but it is still a float32/float16 number in memory. `QuantLinear` keeps only what a 4-bit checkpoint
keeps, as registered buffers (real bytes, moved by `.to()`, saved in `state_dict`):

    qweight     int32 (K*b/32, N)   codes packed along K, low bits first (GPTQ-style; see qviz.pack)
    scales      (n_groups, N)       one scale per group of `group_size` inputs and output column
    zero_point  uint8 (n_groups, N) unsigned zero point z: w = (q - z) * scale, q = code - qmin in [0, 2^b)
    g_idx       int32 (K,)          only for GPTQ act-order: the group of each input column
    bias        (N,)                unchanged

For a (4096, 4096) weight in groups of 128 that is 8 MiB of codes + 0.25 MiB of fp16 scales + 0.125 MiB of
zero points, against 32 MiB in fp16 (about 3.8x smaller).

Backends (`QuantLinear.backend`), all computing y = x @ dequantize(W).T + bias:
- "reference": unpack -> dequantize -> float matmul. Any bit width, any device; the oracle for the others.
- "torch_int4": torch's tinygemm int4 kernels (4-bit, group size 32..256; CUDA in bf16, CPU in any float).
  They read their own tiled copy of the weight, made on first use and held as extra buffers.
- "triton": qviz.kernels.triton_w4a16 (4-bit; CUDA, or CPU under TRITON_INTERPRET=1).
- "auto": on CUDA, triton when it is installed, else torch_int4 for bf16 inputs; on CPU, reference.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from .kernels import torch_int4
from .pack import _scales_as, pack_bits, to_unsigned, unpack_bits
from .quant import QuantizedTensor, QuantSpec, quantize
from .result import QuantResult

__all__ = ["QuantLinear", "BACKENDS", "quantize_linears", "weight_bytes", "triton_available"]

BACKENDS = ("reference", "torch_int4", "triton", "auto")


def triton_available() -> bool:
    """True when the `triton` package is installed (it is an optional extra: pip install qviz[gpu])."""
    return importlib.util.find_spec("triton") is not None


class QuantLinear(nn.Module):
    """y = x @ W.T + bias with W stored as packed `bits`-bit codes. Build it with `from_linear` or
    `from_quantized`; the constructor only allocates empty buffers (e.g. to load a state_dict into)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int = 4,
        group_size: int | None = None,
        symmetric: bool = True,
        bias: bool = True,
        has_g_idx: bool = False,
        scale_dtype: torch.dtype = torch.float16,
        backend: str = "auto",
        device=None,
    ):
        super().__init__()
        self.spec = QuantSpec(bits=bits, symmetric=symmetric, group_size=group_size)
        if bits > 8:
            raise ValueError(
                f"QuantLinear holds 2- to 8-bit codes (packed by qviz.pack.pack_bits; zero points in uint8), "
                f"got bits={bits}: use fake quantization (QuantResult.apply) for wider codes"
            )
        self.in_features, self.out_features = in_features, out_features
        self.group_size = group_size or in_features  # per-channel = one group as long as the row
        if in_features % self.group_size or (in_features * bits) % 32:
            raise ValueError(
                f"in_features {in_features} must be divisible by group_size {self.group_size} and pack into "
                f"whole 32-bit words ({32 // bits if bits != 3 else 32} codes)"
            )
        n_groups = in_features // self.group_size
        kw = {"device": device}
        self.register_buffer(
            "qweight", torch.zeros(in_features * bits // 32, out_features, dtype=torch.int32, **kw)
        )
        self.register_buffer("scales", torch.ones(n_groups, out_features, dtype=scale_dtype, **kw))
        self.register_buffer("zero_point", torch.zeros(n_groups, out_features, dtype=torch.uint8, **kw))
        g_idx = torch.zeros(in_features, dtype=torch.int32, **kw) if has_g_idx else None
        self.register_buffer("g_idx", g_idx)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=scale_dtype, **kw), False) if bias else None
        self.backend = backend

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        if value not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {value!r}")
        if value in ("torch_int4", "triton") and self.spec.bits != 4:
            raise ValueError(
                f"backend {value!r} runs 4-bit weights only; this layer has {self.spec.bits}-bit codes"
            )
        if value == "torch_int4":
            if self.g_idx is not None:
                raise ValueError(
                    "torch_int4 cannot follow a GPTQ act-order g_idx: use 'triton' or 'reference'"
                )
            torch_int4.check_int4_shapes(self.out_features, self.in_features, self.group_size, 4)
        if value == "triton" and not triton_available():
            raise ValueError("backend 'triton' needs the triton package: pip install 'qviz[gpu]'")
        self._backend = value
        self._tinygemm = None  # (packed, scales_and_zeros), rebuilt for torch_int4 on first use
        for name in ("int4_packed", "int4_scales_and_zeros"):  # drop a stale tinygemm copy
            self._buffers.pop(name, None)

    @classmethod
    def from_quantized(
        cls,
        qt: QuantizedTensor,
        bias: torch.Tensor | None = None,
        scale_dtype: torch.dtype | None = None,
        backend: str = "auto",
    ) -> QuantLinear:
        """Pack a QuantizedTensor of a (out_features, in_features) weight (its codes exactly, and its g_idx
        when it has one). scale_dtype defaults to qt.dtype."""
        g_idx = qt.g_idx
        u, uz = to_unsigned(qt)  # (N, K), (N, n_groups) in [0, 2^b)
        n, k = u.shape
        n_groups = uz.shape[1]
        group_size = qt.spec.group_size if g_idx is None else k // n_groups  # None: one group a row
        layer = cls(
            k, n, qt.spec.bits, group_size, qt.spec.symmetric, bias is not None, g_idx is not None,
            scale_dtype or qt.dtype, "reference", u.device,
        )  # fmt: skip
        layer.qweight.copy_(pack_bits(u.T, qt.spec.bits, dim=0))
        layer.scales.copy_(_scales_as(qt.scale.expand(n, -1).T, layer.scales.dtype))
        layer.zero_point.copy_(uz.T)
        if g_idx is not None:
            layer.g_idx.copy_(g_idx)
        if bias is not None:
            layer.bias.data.copy_(bias.detach())
        layer.backend = backend
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, spec: QuantSpec, backend: str = "auto") -> QuantLinear:
        """Round-to-nearest quantize `linear.weight` under `spec` and pack it."""
        qt = quantize(linear.weight.detach(), spec)
        return cls.from_quantized(qt, linear.bias, backend=backend)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # copy_ into the uint8 buffer would wrap a zero point of 300 to 44: refuse what the codes cannot hold
        zero_point, top = state_dict.get(prefix + "zero_point"), 2**self.spec.bits - 1
        if zero_point is not None and zero_point.numel() and (zero_point.min() < 0 or zero_point.max() > top):
            raise ValueError(
                f"{prefix}zero_point: a {self.spec.bits}-bit QuantLinear stores unsigned zero points in [0, {top}], "
                f"got values in [{zero_point.min().item()}, {zero_point.max().item()}]"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def unsigned_codes(self) -> torch.Tensor:
        """Unpacked codes q = code - qmin, (out_features, in_features) int32 in [0, 2^b)."""
        return unpack_bits(self.qweight, self.spec.bits, self.in_features, dim=0).T

    def quantized(self) -> QuantizedTensor:
        """The qviz QuantizedTensor this layer holds (codes in [qmin, qmax]; scale float32 (N, n_groups))."""
        qmin = self.spec.qmin
        codes = self.unsigned_codes() + qmin
        zp = self.zero_point.T.to(torch.int32) + qmin
        return QuantizedTensor(codes, self.scales.T.float(), zp, self.spec, self.scales.dtype, self.g_idx)

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """W_hat (out_features, in_features) = (q - z) * scale, computed in float32, cast to `dtype`."""
        q = self.unsigned_codes()  # (N, K)
        if self.g_idx is None:  # contiguous groups: broadcast over (N, K/g, g) instead of gathering
            z = self.zero_point.T.to(torch.int32).unsqueeze(-1)  # (N, K/g, 1)
            s = self.scales.T.float().unsqueeze(-1)
            w = ((q.reshape(q.shape[0], -1, self.group_size) - z) * s).reshape(q.shape)
        else:
            g = self.g_idx.long()
            w = (q - self.zero_point.T[:, g].to(torch.int32)) * self.scales.T[:, g].float()
        return w.to(dtype or self.scales.dtype).contiguous()  # row-major like nn.Linear.weight: same matmul

    def resolved_backend(self, x: torch.Tensor) -> str:
        """The backend a forward on `x` will use (resolves "auto")."""
        if self.backend != "auto":
            return self.backend
        if x.device.type != "cuda" or self.spec.bits != 4:
            return "reference"
        if triton_available():
            return "triton"
        try:
            torch_int4.check_int4_shapes(self.out_features, self.in_features, self.group_size, 4)
        except ValueError:
            return "reference"
        return "torch_int4" if x.dtype == torch.bfloat16 and self.g_idx is None else "reference"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backend = self.resolved_backend(x)
        if (
            backend == "reference"
        ):  # the same call nn.Linear makes, so results match fake quantization exactly
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return nn.functional.linear(x, self.dequantized_weight(x.dtype), bias)
        x2 = x.reshape(-1, self.in_features)  # (M, K), M = batch * tokens
        if backend == "torch_int4":
            y = self._forward_torch_int4(x2)
        else:
            from .kernels.triton_w4a16 import w4a16_matmul  # imported here: triton is optional

            y = w4a16_matmul(
                x2.contiguous(), self.qweight, self.scales, self.zero_point, self.group_size, self.g_idx
            )
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def _forward_torch_int4(self, x2: torch.Tensor) -> torch.Tensor:
        dtype = torch.bfloat16 if x2.device.type == "cuda" else x2.dtype  # CUDA tinygemm takes bf16 only
        if (
            self._tinygemm is None
            or self._tinygemm[1].dtype != dtype
            or self._tinygemm[0].device != x2.device
        ):
            packed, sz = torch_int4.to_tinygemm(
                self.unsigned_codes(), self.scales, self.zero_point, self.group_size, dtype
            )
            self.register_buffer("int4_packed", packed, persistent=False)  # counted by weight_bytes
            self.register_buffer("int4_scales_and_zeros", sz, persistent=False)
            self._tinygemm = (packed, sz)
        y = torch_int4.int4_mm(x2.to(dtype), self.int4_packed, self.group_size, self.int4_scales_and_zeros)
        return y.to(x2.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, {self.spec.label}, "
            f"bias={self.bias is not None}, backend={self.backend!r}"
        )


def quantize_linears(model: nn.Module, result: QuantResult, backend: str = "auto") -> nn.Module:
    """Replace every linear the method quantized by a QuantLinear holding exactly its codes, in place; copy in
    the float tensors the method changed (AWQ's folded norms), so a fresh float model works as well as the one
    the method quantized. Returns the model, which now computes what the fake-quantized model computed
    (bit for bit in the layers' dtype, with the reference backend and scales kept in float32).

    result: a `qviz.result.QuantResult` (from `qviz.rtn`, `qviz.gptq`, `qviz.awq`, or a checkpoint).
    """
    if not isinstance(result, QuantResult):
        raise ValueError(
            f"expected a qviz.result.QuantResult (what rtn/gptq/awq.quantize_model return), got "
            f"{type(result).__name__}"
        )
    linears = {}
    for name in result.linears:
        try:
            linears[name] = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"the result names {name!r}, which this model does not have") from None
        if not isinstance(linears[name], nn.Linear) or isinstance(linears[name], QuantLinear):
            raise ValueError(f"{name!r} is a {type(linears[name]).__name__}, not an nn.Linear")
        shape = tuple(result.linears[name].codes.shape)
        if shape != tuple(linears[name].weight.shape):
            raise ValueError(
                f"{name}: the result holds a {shape} weight, the model's linear is "
                f"{tuple(linears[name].weight.shape)}: was the result made for another model?"
            )
    state = model.state_dict()
    for key, t in result.float_tensors.items():
        if key not in state or state[key].shape != t.shape:
            got = tuple(state[key].shape) if key in state else "nothing"
            raise ValueError(f"{key}: the result holds a {tuple(t.shape)} tensor, the model has {got}")
    with torch.no_grad():
        for key, t in result.float_tensors.items():
            state[key].copy_(t)
    for name, qt in result.linears.items():
        linear = linears[name]
        layer = QuantLinear.from_quantized(qt, linear.bias, linear.weight.dtype, backend)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, layer.to(linear.weight.device))
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters and buffers (each tensor counted once, tied weights too)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.device, t.data_ptr())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total
