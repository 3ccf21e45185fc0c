"""`QuantResult`: what every method (`qviz.rtn`, `qviz.gptq`, `qviz.awq`) returns, and what the rest of qviz
takes: packing and the 4-bit Linear (`qviz.qlinear.quantize_linears`), checkpoints (`qviz.export`), figures,
benchmarks and the notebooks' result cache.

A method quantizes a model in place (each linear's weight becomes its fake-quantized float copy) and records,
for every linear it quantized, the exact `QuantizedTensor` it chose: codes, scales and zero points, never
re-derived afterwards (re-deriving scales from a GPTQ or AWQ weight need not give the same codes back).

    result.linears["model.layers.0.self_attn.q_proj"]   QuantizedTensor: codes (out, in), scale, zero_point, g_idx
    result.float_tensors["model.layers.0.input_layernorm.weight"]
                                                        a float tensor the method changed outside the quantized
                                                        weights (AWQ folds 1/s into norms and biases)
    result.rows                                         one report row per linear (errors, for tables and figures)

So a fresh copy of the float model plus the result gives back the quantized model exactly (`apply`), and the
result can be saved and loaded without the model (`save`, `load`: one safetensors file, codes bit-packed).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .pack import pack_bits, unpack_bits
from .quant import QuantizedTensor, QuantSpec, check_quantized, dequantize

__all__ = ["QuantResult"]

_DTYPES = {
    str(d).removeprefix("torch."): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64)
}


@dataclass
class QuantResult:
    """The codes a method chose for every linear it quantized, plus its report. Names are qualified module
    names as in `model.named_modules()`."""

    method: str  # "rtn", "gptq" or "awq"
    spec: QuantSpec  # the grid every linear was quantized on
    linears: dict[str, QuantizedTensor] = field(
        default_factory=dict
    )  # exactly the method's codes and qparams
    float_tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # state_dict entries it changed
    rows: list[dict] = field(default_factory=list)  # one report row per linear ({"layer", "linear", ...})
    options: dict = field(default_factory=dict)  # the method's own options, e.g. {"act_order": True, ...}
    scale_groups: list[dict] = field(default_factory=list)  # AWQ: one search record per (layer, scale group)

    def dequantized(self, name: str) -> torch.Tensor:
        """The weight the quantized model computes with for linear `name`: dequantize(codes)."""
        return dequantize(self.linears[name])

    @torch.no_grad()
    def apply(self, model: nn.Module) -> nn.Module:
        """Make a float `model` (same architecture) the fake-quantized model this result describes, in place:
        each quantized linear's weight <- its dequantized codes, and the other changed tensors copied in.
        Returns the model."""
        state = model.state_dict()
        missing = [k for k in (*[f"{n}.weight" for n in self.linears], *self.float_tensors) if k not in state]
        if missing:
            raise ValueError(
                f"this {self.method} result does not fit the model: it has no {missing[:3]} "
                f"({len(missing)} missing); was the result made for another model?"
            )
        for name, qt in self.linears.items():
            weight = state[f"{name}.weight"]
            if weight.shape != qt.codes.shape:
                raise ValueError(
                    f"{name}: result has shape {tuple(qt.codes.shape)}, model {tuple(weight.shape)}"
                )
            weight.copy_(dequantize(qt))
        for key, t in self.float_tensors.items():
            if state[key].shape != t.shape:
                raise ValueError(f"{key}: result has shape {tuple(t.shape)}, model {tuple(state[key].shape)}")
            state[key].copy_(t)
        return model

    # --- a file of its own --------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result to one safetensors file, atomically (a temporary file renamed into place).

        Codes and zero points are stored unsigned and bit-packed along the rows (`qviz.pack.pack_bits`: 4-bit
        codes take half a byte), scales in float32; the rest (spec, options, rows) as JSON metadata. Raises
        ValueError, naming the linear, for codes or qparams that `qviz.quant.check_quantized` refuses.
        """
        path = Path(path)
        tensors, dtypes, specs = {}, {}, {}
        for name, qt in self.linears.items():
            check_quantized(qt, name)
            if qt.spec != self.spec:  # e.g. per-row qparams of a "tensor" spec, read back from a checkpoint
                specs[name] = asdict(qt.spec)
            tensors[f"linears.{name}.codes"] = _packed(qt.codes - qt.spec.qmin, qt.spec.bits)  # unsigned
            tensors[f"linears.{name}.zero_point"] = _packed(qt.zero_point - qt.spec.qmin, qt.spec.bits)
            tensors[f"linears.{name}.scale"] = qt.scale.float().contiguous()
            if qt.g_idx is not None:
                tensors[f"linears.{name}.g_idx"] = qt.g_idx.to(torch.int32).contiguous()
            dtypes[name] = [str(qt.dtype).removeprefix("torch."), *qt.codes.shape, qt.zero_point.shape[1]]
        for key, t in self.float_tensors.items():
            tensors[f"float.{key}"] = t.detach().contiguous()
        meta = {
            "method": self.method,
            "spec": asdict(self.spec),
            "options": self.options,
            "rows": self.rows,
            "scale_groups": self.scale_groups,
            "linears": dtypes,
            "specs": specs,  # the linears whose spec is not the result's
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"qviz": json.dumps(meta, default=_json_default)})
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> QuantResult:
        """Read a file written by `save`; codes, scales and zero points come back bit for bit.

        Raises ValueError naming the file (and the linear) for a missing, truncated, foreign or inconsistent
        file, with the fix: delete it (a cached result is then recomputed).
        """
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path} is not a readable qviz result: there is no such file")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["qviz"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            return cls._from_stored(meta, tensors)
        except (SafetensorError, OSError, KeyError, TypeError, ValueError) as err:
            # a truncated or foreign file, or metadata and tensors that do not describe a result
            raise ValueError(
                f"{path} is not a readable qviz result ({type(err).__name__}: {err}); delete it to recompute it"
            ) from None

    @classmethod
    def _from_stored(cls, meta: dict, tensors: dict[str, torch.Tensor]) -> QuantResult:
        names = {f.name for f in fields(QuantSpec)}
        spec = QuantSpec(**{k: v for k, v in meta["spec"].items() if k in names})
        linears = {}
        for name, (dtype, *shape, n_groups) in meta["linears"].items():
            own = QuantSpec(**meta["specs"][name]) if name in meta.get("specs", {}) else spec
            linears[name] = QuantizedTensor(
                _unpacked(tensors[f"linears.{name}.codes"], own.bits, shape[-1]) + own.qmin,
                tensors[f"linears.{name}.scale"],
                _unpacked(tensors[f"linears.{name}.zero_point"], own.bits, n_groups) + own.qmin,
                own,
                _DTYPES[dtype],
                tensors.get(f"linears.{name}.g_idx"),
            )
            check_quantized(linears[name], name)
        float_tensors = {k.removeprefix("float."): t for k, t in tensors.items() if k.startswith("float.")}
        rows = [_restore_row(row) for row in meta["rows"]]
        return cls(meta["method"], spec, linears, float_tensors, rows, meta["options"], meta["scale_groups"])


def _packed(u: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned values (rows, n) in [0, 2^bits): bit-packed along n up to 8 bits, else as int32."""
    return pack_bits(u, bits) if bits <= 8 else u.to(torch.int32).contiguous()


def _unpacked(t: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    return (unpack_bits(t, bits, n) if bits <= 8 else t).to(torch.int32)


def _json_default(value):
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def _restore_row(row: dict) -> dict:
    """JSON has no tuples: give back the shape tuple of a report row."""
    return {**row, "shape": tuple(row["shape"])} if "shape" in row else row
