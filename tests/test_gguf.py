"""qviz.gguf decodes every block format bit for bit as the `gguf` package's own dequantizer does: on random
blocks (every byte pattern is a block) and on every tensor of both offline models' real files."""

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import dequantize as gguf_dequantize

from qviz.gguf import (
    BLOCKS,
    GGUFTensor,
    check_complete,
    dequantize,
    k4_scales_mins,
    metadata,
    metadata_value,
    read_gguf,
    write_gguf,
)

QUANTIZED = [t for t in BLOCKS if t.startswith("Q")]


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal as float32 bit patterns (so NaN == NaN, and -0.0 != 0.0)."""
    return a.shape == b.shape and np.array_equal(
        a.astype(np.float32).view(np.uint32), b.astype(np.float32).view(np.uint32)
    )


@pytest.mark.parametrize("kind", QUANTIZED)
def test_random_blocks_decode_as_gguf_decodes_them(kind):
    per_block, size = BLOCKS[kind]
    raw = np.random.default_rng(0).integers(0, 256, size=(64, size), dtype=np.uint8)
    halves = np.frombuffer(np.float16([0.013, 0.002]).tobytes(), np.uint8)
    if kind in ("Q6_K", "Q3_K"):
        raw[:, -2:] = halves[:2]  # a finite d (stored last)
    else:
        raw[:, :4] = halves  # finite d and m / dmin (Q5_0, Q8_0: d and two code bytes)
    ours = dequantize(GGUFTensor("t", kind, (64 * per_block,), raw)).numpy()
    theirs = gguf_dequantize(raw, GGMLQuantizationType[kind]).reshape(-1)
    assert np.isfinite(ours).any() and _same_bits(ours, theirs)


def test_k4_scales_and_mins_by_hand():
    """Sub-block 5 (of 0-7) keeps its low 4 bits in byte 9 and its top 2 bits in the spare bits of bytes 1 (scale)
    and 5 (min)."""
    scales = torch.zeros(1, 12, dtype=torch.uint8)
    scales[0, 1] = 0b10_000011  # sub-block 1's scale 3; the top bits 2 of sub-block 5's scale
    scales[0, 5] = 0b01_000111  # sub-block 1's min 7; the top bits 1 of sub-block 5's min
    scales[0, 9] = 0b1010_0110  # sub-block 5: min low nibble 10, scale low nibble 6
    sc, m = k4_scales_mins(scales)
    assert sc[0].tolist() == [0, 3, 0, 0, 0, (2 << 4) | 6, 0, 0]
    assert m[0].tolist() == [0, 7, 0, 0, 0, (1 << 4) | 10, 0, 0]


@pytest.fixture(scope="module")
def release_files():
    from qviz.models import OFFLINE_MODELS, _gguf_path

    with tempfile.TemporaryDirectory() as tmp:
        yield {name: _gguf_path(OFFLINE_MODELS[name], Path(tmp)) for name in ("smollm2-135m", "gemma-3-270m")}


@pytest.mark.slow
def test_every_tensor_of_both_releases_decodes_as_gguf_decodes_it(release_files):
    from gguf import GGUFReader

    kinds = {}
    for name, path in release_files.items():
        ours = read_gguf(path)
        for t in GGUFReader(path).tensors:
            mine = ours[t.name]
            kinds.setdefault(name, set()).add(mine.type)
            theirs = gguf_dequantize(np.asarray(t.data), t.tensor_type).reshape(mine.shape)
            assert _same_bits(dequantize(mine).numpy(), theirs), (name, t.name, mine.type)
    assert {"Q4_1", "F32"} <= kinds["smollm2-135m"]
    assert {"Q4_K", "Q5_0", "Q6_K", "Q8_0", "F32"} <= kinds["gemma-3-270m"]  # Q4_K_M's mix


@pytest.mark.slow
def test_q4_k_m_costs_more_than_4_bits(release_files):
    tensors = read_gguf(release_files["gemma-3-270m"])
    q4k = next(t for t in tensors.values() if t.type == "Q4_K")
    assert q4k.bits_per_weight == 4.5  # 4-bit codes + (2 + 2 + 12) bytes per 256 weights
    linears = [t for n, t in tensors.items() if n.startswith("blk.") and len(t.shape) == 2]
    bits = sum(t.data.size * 8 for t in linears) / sum(int(np.prod(t.shape)) for t in linears)
    assert 4.5 < bits < 6.6  # the Q4_K_M mix: Q4_K, with some tensors in Q5_0, Q6_K or Q8_0


def _write(path: Path, kind: GGMLQuantizationType, raw: np.ndarray) -> None:
    writer = GGUFWriter(path, "llama")
    writer.add_tensor("blk.0.ffn_down.weight", raw, raw_shape=raw.shape, raw_dtype=kind)  # shape in bytes
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_a_written_file_reads_back_and_bad_files_are_refused(tmp_path):
    raw = np.random.default_rng(1).integers(0, 256, size=(2, 144), dtype=np.uint8)
    raw[:, :4] = np.frombuffer(np.float16([0.01, 0.002]).tobytes(), np.uint8)
    good = tmp_path / "q4k.gguf"
    _write(good, GGMLQuantizationType.Q4_K, raw)
    tensor = read_gguf(good)["blk.0.ffn_down.weight"]
    assert tensor.type == "Q4_K" and tensor.shape == (2, 256)
    assert _same_bits(dequantize(tensor).numpy(), gguf_dequantize(raw, GGMLQuantizationType.Q4_K))

    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ValueError, match="cut.gguf"):
        read_gguf(cut)
    with pytest.raises(ValueError, match="not a readable GGUF"):
        (tmp_path / "text.gguf").write_text("not a gguf file")
        read_gguf(tmp_path / "text.gguf")
    iq = tmp_path / "iq.gguf"
    _write(iq, GGMLQuantizationType.TQ2_0, np.zeros((1, 66), np.uint8))
    with pytest.raises(ValueError, match="TQ2_0; qviz decodes F32, F16"):
        read_gguf(iq)
    with pytest.raises(ValueError, match="is not a file"):
        read_gguf(tmp_path / "missing.gguf")


@pytest.mark.slow
def test_release_tensors_reads_the_same_blocks_from_its_index(release_files):
    """models.release_tensors parses the file once, then reads blocks at the offsets it kept: both ways give the
    tensors read_gguf gives."""
    from qviz.models import cached_model_dir, release_tensors

    ours = read_gguf(release_files["smollm2-135m"])
    (cached_model_dir("smollm2-135m") / "release_index.json").unlink(missing_ok=True)
    for _ in range(2):  # the first call writes the index, the second reads it
        tensors, size = release_tensors("smollm2-135m")
        assert size == release_files["smollm2-135m"].stat().st_size and tensors.keys() == ours.keys()
        for k, t in ours.items():
            assert (tensors[k].type, tensors[k].shape) == (t.type, t.shape) and np.array_equal(
                tensors[k].data, t.data
            )


@pytest.mark.slow
def test_rewriting_a_release_with_its_own_metadata_gives_the_file_back_byte_for_byte(release_files, tmp_path):
    """write_gguf lays a file out as the writer of both releases did: header, metadata copied entry by entry,
    tensor infos, aligned blocks. Any slip in a length, a dimension order, a type id or the padding breaks this."""
    for name, path in release_files.items():
        out = write_gguf(tmp_path / f"{name}.gguf", read_gguf(path).values(), path)
        assert out.read_bytes() == path.read_bytes(), name
        assert list(metadata(out)) == list(metadata(path))
        assert metadata_value(metadata(out)["general.architecture"]) in ("llama", "gemma3")


def _q8_tensor(name="blk.0.ffn_down.weight", rows=2):
    raw = np.zeros((rows, 34), np.uint8)
    raw[:, :2] = np.frombuffer(np.float16([0.5]).tobytes(), np.uint8)
    raw[:, 2:] = np.arange(32, dtype=np.int8).view(np.uint8)
    return GGUFTensor(name, "Q8_0", (rows, 32), raw)


def test_write_gguf_changes_metadata_and_refuses_bad_input_leaving_no_file(tmp_path):
    template = tmp_path / "template.gguf"
    _write(template, GGMLQuantizationType.Q8_0, _q8_tensor().data)
    out = write_gguf(
        tmp_path / "out.gguf", [_q8_tensor()], template, changes={"general.name": "qviz", "n": 7}
    )
    entries = metadata(out)
    assert metadata_value(entries["general.name"]) == "qviz" and metadata_value(entries["n"]) == 7
    assert metadata_value(entries["general.architecture"]) == "llama"  # copied from the template
    t = read_gguf(out)["blk.0.ffn_down.weight"]
    assert t.shape == (2, 32) and dequantize(t)[0, :3].tolist() == [0.0, 0.5, 1.0]

    bad = [
        ([_q8_tensor(), _q8_tensor()], {}, "given twice"),
        ([GGUFTensor("x", "Q8_0", (2, 48), np.zeros((3, 34), np.uint8))], {}, "do not fill shape"),
        ([GGUFTensor("x", "Q9_9", (1, 32), np.zeros((1, 34), np.uint8))], {}, "not a GGML type"),
        ([_q8_tensor()], {"general.name": 1.5}, "must be a str or an int"),
    ]
    for tensors, changes, match in bad:
        with pytest.raises(ValueError, match=match):
            write_gguf(tmp_path / "bad.gguf", tensors, template, changes=changes)
    with pytest.raises(ValueError, match="exists: pass overwrite=True"):
        write_gguf(out, [_q8_tensor()], template)
    check_complete(out)
    for cut_at, match in ((-40, "tensor blk.0.ffn_down.weight needs"), (30, "not a readable GGUF")):
        (tmp_path / "cut.gguf").write_bytes(out.read_bytes()[:cut_at])
        with pytest.raises(ValueError, match=match):
            check_complete(tmp_path / "cut.gguf")
    (tmp_path / "cut.gguf").unlink()
    (tmp_path / "text.gguf").write_text("not a gguf file")
    with pytest.raises(ValueError, match="not a readable GGUF"):
        write_gguf(tmp_path / "bad.gguf", [_q8_tensor()], tmp_path / "text.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf", "template.gguf", "text.gguf"]


def test_a_write_that_fails_midway_leaves_no_file(tmp_path, monkeypatch):
    template = tmp_path / "template.gguf"
    _write(template, GGMLQuantizationType.Q8_0, _q8_tensor().data)
    target = tmp_path / "out.gguf"
    target.write_bytes(b"the old file")

    def no_disk(fd):
        raise OSError("disk full")

    monkeypatch.setattr("os.fsync", no_disk)
    with pytest.raises(OSError, match="disk full"):
        write_gguf(target, [_q8_tensor()], template, overwrite=True)
    assert target.read_bytes() == b"the old file"  # the old file, whole, and no temporary file beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf", "template.gguf"]
