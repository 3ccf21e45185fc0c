"""GGUF, the file llama.cpp (and Ollama, LM Studio) runs, read byte by byte: its tensors and the block formats
that hold them, decoded by hand.

A quantized GGUF tensor is a sequence of fixed-size **blocks**; each block holds the codes of a run of consecutive
weights of one row and the numbers that turn them back into floats. Two families:

    legacy (32 weights a block)     Q4_0: w = d·(q − 8)          Q4_1: w = d·q + m       Q5_0: w = d·(q − 16)
                                    Q8_0: w = d·q (q signed)     d, m: float16 per block; q: 4, 5 or 8 bits
    k-quants (256-weight            Q4_K, Q5_K: 8 sub-blocks of 32, each with its own 6-bit scale sc_j and min m_j,
    "super-blocks")                   themselves scaled by the block's float16 d and dmin:  w = (d·sc_j)·q − dmin·m_j
                                    Q6_K: 16 sub-blocks of 16, signed 8-bit scales sc_j:  w = (d·sc_j)·(q − 32)

The k-quants quantize the per-sub-block scales too (6 bits each instead of 16), which is how Q4_K stores 4-bit
codes at 4.5 bits per weight: 4 + (2·16 + 12·8)/256. The byte layouts (`BLOCKS`) are llama.cpp's `block_q4_K`
etc. (ggml-common.h); each decoder below reads its fields at their byte offsets and follows the arithmetic of
llama.cpp's `dequantize_row_*` in float32, so its output equals the `gguf` package's dequantizer bit for bit
(tested on every tensor of both offline models' files and on random blocks).

Symbols -> variables: d, dmin the block's float16 scales; sc, m the sub-block scales and mins (`k4_scales_mins`
unpacks Q4_K/Q5_K's 12 packed bytes); q the codes.

Writing (`write_gguf`): the file around the blocks is simple too (GGUF version 3, little-endian):

    "GGUF", version (u32), tensor count (u64), metadata count (u64)
    metadata: key (string), value type (u32), value         -- architecture, tokenizer, hyperparameters
    tensor infos: name (string), n_dims (u32), dims (u64 each, the row length first), type (u32), offset (u64)
    padding to the alignment (32), then every tensor's blocks, each starting at a multiple of the alignment

where a string is its length (u64) and its UTF-8 bytes. `write_gguf` copies a template file's metadata entry by
entry (the tokenizer and hyperparameters of the released model), optionally changing a few, and writes the tensors
it is given: that is how a model quantized by qviz becomes a file llama.cpp runs.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "BLOCKS",
    "GGUFTensor",
    "atomic_file",
    "check_complete",
    "dequantize",
    "k4_scales_mins",
    "metadata",
    "metadata_value",
    "read_gguf",
    "write_gguf",
]

QK_K = 256  # weights per k-quant super-block

# type -> (weights per block, bytes per block); the float types as blocks of one value
BLOCKS = {
    "F32": (1, 4),
    "F16": (1, 2),
    "BF16": (1, 2),
    "Q4_0": (32, 2 + 16),  # d, 32 4-bit codes
    "Q4_1": (32, 2 + 2 + 16),  # d, m, 32 4-bit codes
    "Q5_0": (32, 2 + 4 + 16),  # d, the 32 fifth bits, 32 low nibbles
    "Q8_0": (32, 2 + 32),  # d, 32 signed bytes
    "Q3_K": (QK_K, 32 + 64 + 12 + 2),  # 256 third bits, 256 2-bit pairs, 16 scales in 6 bits, d
    "Q4_K": (QK_K, 2 + 2 + 12 + 128),  # d, dmin, 8 scales + 8 mins in 6 bits, 256 4-bit codes
    "Q5_K": (QK_K, 2 + 2 + 12 + 32 + 128),  # ... plus the 256 fifth bits
    "Q6_K": (QK_K, 128 + 64 + 16 + 2),  # 256 low nibbles, 256 high 2-bit pairs, 16 int8 scales, d
}


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file, as stored: `type` ("Q4_K", "F32", ...), `shape` in PyTorch's order (rows,
    columns; GGUF lists the row length first) and `data`, its raw bytes (n_blocks, bytes per block)."""

    name: str
    type: str
    shape: tuple[int, ...]
    data: np.ndarray

    @property
    def bits_per_weight(self) -> float:
        """Bytes on disk × 8 / weights: what the format costs, scales and mins included."""
        return 8 * self.data.size / int(np.prod(self.shape))


def read_gguf(
    path: str | Path, *, offsets: dict | None = None, any_type: bool = False
) -> dict[str, GGUFTensor]:
    """The tensors of a GGUF file, by GGUF name ("blk.0.attn_q.weight"), with their raw blocks (memory-mapped).
    offsets: a dict to fill with each tensor's byte offset in the file (where its blocks start). any_type: keep
    tensors of types qviz does not decode (llama.cpp's IQ4_NL, Q5_1, ...) as blocks too, e.g. to copy them into
    another file; by default such a tensor is an error."""
    from gguf import GGML_QUANT_SIZES, GGUFReader

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    try:
        reader = GGUFReader(path)
    except (ValueError, IndexError, OSError) as err:  # a bad magic number, a cut-off header or data
        raise ValueError(f"{path} is not a readable GGUF file ({type(err).__name__}: {err})") from None
    tensors = {}
    for t in reader.tensors:
        kind = t.tensor_type.name
        if kind not in BLOCKS and not any_type:
            raise ValueError(f"{path}: tensor {t.name} has type {kind}; qviz decodes {', '.join(BLOCKS)}")
        per_block, size = BLOCKS.get(kind) or GGML_QUANT_SIZES[t.tensor_type]
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF: (columns, rows, ...)
        if t.n_bytes != int(np.prod(shape)) // per_block * size or t.data.nbytes != t.n_bytes:
            raise ValueError(
                f"{path}: tensor {t.name} holds {t.data.nbytes} bytes, its shape needs {t.n_bytes}"
            )
        tensors[t.name] = GGUFTensor(t.name, kind, shape, np.asarray(t.data).view(np.uint8).reshape(-1, size))
        if offsets is not None:
            offsets[t.name] = int(t.data_offset)
    return tensors


def dequantize(tensor: GGUFTensor) -> torch.Tensor:
    """The tensor's float32 values, in its shape, decoded block by block (`_DECODERS`)."""
    blocks = torch.from_numpy(np.array(tensor.data))  # a copy: the file is memory-mapped read-only
    return _DECODERS[tensor.type](blocks).reshape(tensor.shape)


# --- the block decoders: (n_blocks, bytes) uint8 -> (n_blocks, weights) float32 -----------------------------------


def _f16(b: torch.Tensor) -> torch.Tensor:
    """Two bytes per row, little-endian float16 -> (n, 1) float32."""
    return b.contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """(n, k) bytes -> (n, 2k) 4-bit codes: the k low nibbles, then the k high nibbles (llama.cpp's order)."""
    return torch.cat([qs & 0x0F, qs >> 4], dim=-1)


def _bits(b: torch.Tensor) -> torch.Tensor:
    """(n, k) bytes -> (n, k, 8): bit i of each byte (little-endian)."""
    return (b[..., None] >> torch.arange(8, dtype=torch.uint8)) & 1


def _q4_0(b):
    d, q = _f16(b[:, 0:2]), _nibbles(b[:, 2:18])
    return d * (q.float() - 8)


def _q4_1(b):
    d, m, q = _f16(b[:, 0:2]), _f16(b[:, 2:4]), _nibbles(b[:, 4:20])
    return d * q.float() + m


def _q5_0(b):
    d, qh, low = _f16(b[:, 0:2]), b[:, 2:6], _nibbles(b[:, 6:22])
    fifth = _bits(qh).reshape(-1, 32)  # bit j of the 32-bit qh is weight j's fifth bit
    return d * ((low | (fifth << 4)).float() - 16)


def _q8_0(b):
    d, q = _f16(b[:, 0:2]), b[:, 2:34].view(torch.int8)
    return d * q.float()


def k4_scales_mins(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K's 12 bytes -> 8 six-bit scales and 8 six-bit mins per super-block (llama.cpp's get_scale_min_k4):
    sub-blocks 0-3 keep theirs in the low 6 bits of bytes 0-3 (scales) and 4-7 (mins); sub-blocks 4-7 keep their
    low 4 bits in bytes 8-11 (scale: low nibble, min: high nibble) and their top 2 bits in the spare top bits of
    bytes 0-3 (scales) and 4-7 (mins)."""
    a, b, c = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = torch.cat([a & 63, (c & 0x0F) | ((a >> 6) << 4)], dim=-1)
    m = torch.cat([b & 63, (c >> 4) | ((b >> 6) << 4)], dim=-1)
    return sc, m


def _k4(b, q):
    """w = (d·sc_j)·q − dmin·m_j for the 8 sub-blocks of 32 of each Q4_K / Q5_K super-block."""
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, m = k4_scales_mins(b[:, 4:16])
    scale, offset = (d * sc.float())[..., None], (dmin * m.float())[..., None]  # (n, 8, 1)
    return (scale * q.reshape(-1, 8, 32).float() - offset).reshape(-1, QK_K)


def _chunks_of_64(qs: torch.Tensor) -> torch.Tensor:
    """(n, 128) bytes of a k-quant -> (n, 256) low nibbles: each 32-byte chunk holds 64 weights, its low nibbles
    first (sub-block 2i), then its high nibbles (sub-block 2i + 1)."""
    return torch.cat([_nibbles(qs[:, 32 * i : 32 * i + 32]) for i in range(4)], dim=-1)


def _q3_k(b):
    """w = (d·(sc_j − 32))·(q − 4) for the 16 sub-blocks of 16: q's low 2 bits in qs (per 128 weights, 4 runs of 32
    in bit pairs 0, 2, 4, 6 of the same 32 bytes), its third bit in hmask (weight i: byte i % 32, bit i // 32); the
    6-bit scales as 4 low bits (bytes 0-7: sub-block j < 8 low nibble, j + 8 high nibble) plus 2 top bits (byte
    8 + j % 4, bit pair j // 4)."""
    hmask, qs, sc, d = b[:, 0:32], b[:, 32:96], b[:, 96:108], _f16(b[:, 108:110])
    low4 = torch.cat([sc[:, :8] & 0x0F, sc[:, :8] >> 4], dim=-1)  # (n, 16)
    top2 = torch.cat([(sc[:, 8:12] >> (2 * k)) & 3 for k in range(4)], dim=-1)  # j = 4k + i
    scales = (low4 | (top2 << 4)).float() - 32
    low = torch.cat(
        [(qs[:, 32 * h : 32 * h + 32] >> (2 * k)) & 3 for h in range(2) for k in range(4)], dim=-1
    )
    high = torch.cat([(hmask >> k) & 1 for k in range(8)], dim=-1)  # weight 32k + l: bit k of hmask[l]
    q = (low | (high << 2)).float() - 4  # (n, 256)
    return ((d * scales)[..., None] * q.reshape(-1, 16, 16)).reshape(-1, QK_K)


def _q4_k(b):
    return _k4(b, _chunks_of_64(b[:, 16:144]))


def _q5_k(b):
    qh, low = b[:, 16:48], _chunks_of_64(b[:, 48:176])
    fifth = _bits(qh).permute(0, 2, 1).reshape(-1, QK_K)  # bit i of qh[l] is the fifth bit of weight 32i + l
    return _k4(b, low | (fifth << 4))


def _q6_k(b):
    """Two halves of 128 weights; in each, ql's 64 bytes give the low nibbles of weights l and l + 32 (low
    nibble) and l + 64, l + 96 (high nibble), qh's 32 bytes their top 2 bits, in bit pairs 0, 2, 4, 6."""
    ql, qh, scales, d = b[:, 0:128], b[:, 128:192], b[:, 192:208].view(torch.int8), _f16(b[:, 208:210])
    halves = []
    for h in range(2):
        low = ql[:, 64 * h : 64 * h + 64]
        low = torch.cat([low[:, :32] & 0x0F, low[:, 32:] & 0x0F, low[:, :32] >> 4, low[:, 32:] >> 4], dim=-1)
        top = qh[:, 32 * h : 32 * h + 32]
        top = torch.cat([(top >> shift) & 3 for shift in (0, 2, 4, 6)], dim=-1)
        halves.append(low | (top << 4))
    q = torch.cat(halves, dim=-1).view(torch.int8) - 32  # (n, 256), codes -32 .. 31
    scale = (d * scales.float())[..., None]  # (n, 16, 1): one per sub-block of 16
    return (scale * q.reshape(-1, 16, 16).float()).reshape(-1, QK_K)


_DECODERS = {
    "F32": lambda b: b.contiguous().view(torch.float32),
    "F16": lambda b: b.contiguous().view(torch.float16).float(),
    "BF16": lambda b: b.contiguous().view(torch.bfloat16).float(),
    "Q4_0": _q4_0,
    "Q4_1": _q4_1,
    "Q5_0": _q5_0,
    "Q8_0": _q8_0,
    "Q3_K": _q3_k,
    "Q4_K": _q4_k,
    "Q5_K": _q5_k,
    "Q6_K": _q6_k,
}


# --- the file around the blocks: metadata and writing ---------------------------------------------------------------

_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY, _U32 = 8, 9, 4  # GGUF metadata value types (gguf's GGUFValueType)


def _value_end(raw, pos: int, vtype: int) -> int:
    """Where the metadata value of type `vtype` that starts at `pos` ends."""
    if vtype in _SCALARS:
        return pos + struct.calcsize(_SCALARS[vtype])
    if vtype == _STRING:
        return pos + 8 + struct.unpack_from("<Q", raw, pos)[0]
    if vtype == _ARRAY:
        etype, count = struct.unpack_from("<IQ", raw, pos)
        pos += 12
        if etype in _SCALARS:
            return pos + count * struct.calcsize(_SCALARS[etype])
        for _ in range(count):  # strings (a vocabulary) or nested arrays: one by one
            pos = _value_end(raw, pos, etype)
        return pos
    raise ValueError(f"unknown GGUF metadata value type {vtype}")


def _string(raw, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", raw, pos)
    return bytes(raw[pos + 8 : pos + 8 + n]).decode("utf-8"), pos + 8 + n


def metadata(path: str | Path) -> dict[str, tuple[int, bytes]]:
    """A GGUF file's metadata as stored: {key: (value type, the value's bytes)}, in file order. Scalars and
    strings can be read with `metadata_value`; arrays (the vocabulary) are kept as bytes, to be copied."""
    return _header(path)[0]


def check_complete(path: str | Path) -> None:
    """Raise ValueError unless the GGUF file at `path` holds its whole header and every tensor's blocks (a file
    cut short by a failed download or copy), without reading the blocks."""
    _header(path)


def _header(path: str | Path) -> tuple[dict[str, tuple[int, bytes]], list[tuple[str, int, tuple, int]]]:
    """(metadata, tensor infos as (name, GGML type id, GGUF dims, offset in the data section)), checked against
    the file's size."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as raw:
        try:
            if raw[:4] != b"GGUF":
                raise ValueError("no GGUF magic number")
            version, n_tensors, n_kv = struct.unpack_from("<IQQ", raw, 4)
            if version != 3:
                raise ValueError(f"GGUF version {version}; qviz reads version 3")
            entries, infos, pos = {}, [], 24
            for _ in range(n_kv):
                key, pos = _string(raw, pos)
                (vtype,) = struct.unpack_from("<I", raw, pos)
                end = _value_end(raw, pos + 4, vtype)
                if end > len(raw):
                    raise ValueError("the metadata runs past the end of the file")
                entries[key] = (vtype, bytes(raw[pos + 4 : end]))
                pos = end
            for _ in range(n_tensors):
                name, pos = _string(raw, pos)
                (n_dims,) = struct.unpack_from("<I", raw, pos)
                dims = struct.unpack_from(f"<{n_dims}Q", raw, pos + 4)
                kind, offset = struct.unpack_from("<IQ", raw, pos + 4 + 8 * n_dims)
                infos.append((name, kind, dims, offset))
                pos += 4 + 8 * n_dims + 12
            align = metadata_value(entries["general.alignment"]) if "general.alignment" in entries else 32
            data_start = pos + (-pos % align)
            for name, kind, dims, offset in infos:
                per_block, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
                end = data_start + offset + int(np.prod(dims)) // per_block * size
                if end > len(raw):
                    raise ValueError(
                        f"the file ends at byte {len(raw):,}; tensor {name} needs {end:,} (cut short?)"
                    )
        except (struct.error, UnicodeDecodeError, ValueError, KeyError) as err:
            raise ValueError(f"{path} is not a readable GGUF file ({err})") from None
    return entries, infos


def metadata_value(entry: tuple[int, bytes]):
    """The Python value of a scalar or string metadata entry (from `metadata`)."""
    vtype, raw = entry
    if vtype == _STRING:
        return _string(raw, 0)[0]
    if vtype in _SCALARS:
        return struct.unpack(_SCALARS[vtype], raw)[0]
    raise ValueError(f"metadata_value reads scalars and strings, not value type {vtype} (an array)")


def _encode_string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def _encode_entry(value) -> tuple[int, bytes]:
    """A new metadata value: a str becomes a string, an int a u32 (what general.file_type and most counts are)."""
    if isinstance(value, str):
        return _STRING, _encode_string(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32:
        return _U32, struct.pack("<I", value)
    raise ValueError(f"new metadata values must be a str or an int in [0, 2**32), got {value!r}")


@contextlib.contextmanager
def atomic_file(path: str | Path, overwrite: bool = False):
    """Yield a temporary path beside `path` to write a file to; on success it is flushed to disk and renamed to
    `path`, on an error removed: a reader never sees half a file. Refuses an existing `path` without overwrite."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ValueError(f"{path} exists: pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_gguf(
    path: str | Path,
    tensors: Iterable[GGUFTensor],
    template: str | Path,
    *,
    changes: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `tensors` (in the order given) as a GGUF file at `path`, with the metadata of the GGUF file
    `template` (copied entry by entry) and `changes` applied to it ({key: str or int}: replaced in place, or added
    at the end). Atomic: written to a temporary file beside `path`, flushed to disk, then renamed; an error leaves
    no file behind. Returns the path.

    Each tensor's blocks must fill its shape; its type may be any GGML type (blocks qviz cannot decode, such as
    llama.cpp's IQ4_NL, are copied as they are); names must be unique. Written with the same layout rules
    as the `gguf` package's writer, so re-writing a file's own tensors with its own metadata gives the file back
    byte for byte (tested on both offline models' releases).
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    sizes = {kind.name: size for kind, size in GGML_QUANT_SIZES.items()}  # every GGML type, e.g. IQ4_NL
    path, tensors = Path(path), list(tensors)
    entries = dict(metadata(template))
    for key, value in (changes or {}).items():
        entries[key] = _encode_entry(value)
    align = metadata_value(entries["general.alignment"]) if "general.alignment" in entries else 32
    infos, offset, names = [], 0, set()
    for t in tensors:
        if t.name in names:
            raise ValueError(f"tensor {t.name} is given twice")
        names.add(t.name)
        if t.type not in sizes:
            raise ValueError(f"tensor {t.name} has type {t.type!r}, which is not a GGML type")
        per_block, size = sizes[t.type]
        n = int(np.prod(t.shape))
        if t.shape[-1] % per_block or t.data.nbytes != n // per_block * size:
            raise ValueError(
                f"tensor {t.name}: {t.data.nbytes} bytes of {t.type} do not fill shape {t.shape} "
                f"(rows must be a multiple of {per_block} weights, {size} bytes per block)"
            )
        dims = [int(d) for d in reversed(t.shape)]  # GGUF lists the row length first
        infos.append(
            _encode_string(t.name)
            + struct.pack(f"<I{len(dims)}Q", len(dims), *dims)
            + struct.pack("<IQ", GGMLQuantizationType[t.type].value, offset)
        )
        offset += -(-t.data.nbytes // align) * align

    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(entries))
    header += b"".join(_encode_string(k) + struct.pack("<I", vt) + raw for k, (vt, raw) in entries.items())
    header += b"".join(infos)
    with atomic_file(path, overwrite) as tmp, open(tmp, "wb") as f:
        f.write(header + bytes(-len(header) % align))
        for t in tensors:
            f.write(np.ascontiguousarray(t.data).tobytes())
            f.write(bytes(-t.data.nbytes % align))
    return path
