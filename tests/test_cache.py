import json

import pytest
import torch
from tiny_models import tiny_llama

from qviz import rtn
from qviz.cache import cached, cached_result, result_path, results_dir
from qviz.quant import QuantSpec


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QVIZ_CACHE", str(tmp_path))


def test_computes_once_per_params():
    calls = []

    def compute():
        calls.append(1)
        return {"ppl": 21.5 + len(calls)}

    first = cached("rtn", {"model": "m", "bits": 4}, compute)
    again = cached("rtn", {"bits": 4, "model": "m"}, compute)  # same params, other order
    other = cached("rtn", {"model": "m", "bits": 3}, compute)
    assert first == again == {"ppl": 22.5} and other == {"ppl": 23.5} and len(calls) == 2
    assert cached("rtn", {"model": "m", "bits": 4}, compute, refresh=True) == {"ppl": 24.5}
    stored = [json.loads(p.read_text()) for p in results_dir().glob("rtn-*.json")]
    assert len(stored) == 2 and {s["params"]["bits"] for s in stored} == {3, 4}


def test_failed_compute_leaves_nothing():
    def boom():
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        cached("rtn", {"model": "m"}, boom)
    with pytest.raises(RuntimeError):
        cached_result("rtn", {"model": "m"}, boom)
    assert not results_dir().exists() or not any(results_dir().iterdir())


def test_quant_results_are_computed_once_and_come_back_exactly():
    calls = []

    def compute():
        calls.append(1)
        return rtn.quantize_model(tiny_llama(), QuantSpec(bits=4, group_size=32), progress=False)

    first = cached_result("rtn", {"model": "tiny"}, compute)
    again = cached_result("rtn", {"model": "tiny"}, compute)
    assert len(calls) == 1 and result_path("rtn", {"model": "tiny"}, ".safetensors").exists()
    for name, qt in first.linears.items():
        assert torch.equal(again.linears[name].codes, qt.codes) and torch.equal(
            again.linears[name].scale, qt.scale
        )
    assert again.rows == first.rows


def test_a_truncated_entry_names_the_file_and_the_fix():
    cached("rtn", {"model": "m"}, lambda: {"ppl": 21.5})
    path = result_path("rtn", {"model": "m"})
    path.write_text(path.read_text()[:20])
    with pytest.raises(
        ValueError, match=rf"{path.name} is not a readable qviz cache entry .* delete it .* refresh=True"
    ):
        cached("rtn", {"model": "m"}, lambda: {"ppl": 0.0})
    assert cached("rtn", {"model": "m"}, lambda: {"ppl": 22.0}, refresh=True) == {"ppl": 22.0}


def test_an_entry_holding_other_params_is_refused():
    """A file under this key whose recorded params differ (copied, edited, or a hash collision) is not returned."""
    cached("rtn", {"model": "m"}, lambda: {"ppl": 21.5})
    path = result_path("rtn", {"model": "m"})
    path.write_text(json.dumps({"params": {"model": "other"}, "result": {"ppl": 99.0}}))
    with pytest.raises(ValueError, match=r"holds the result of other parameters \(\{'model': 'other'\}\)"):
        cached("rtn", {"model": "m"}, lambda: {"ppl": 0.0})


def test_params_json_lacks_still_key_and_match():
    params = {"model": "m", "dtype": torch.float16, "shape": (2, 3)}
    assert cached("rtn", params, lambda: {"ppl": 1.0}) == cached("rtn", params, lambda: {"ppl": 2.0})


def test_a_result_that_is_not_json_is_refused_instead_of_coming_back_as_a_string():
    with pytest.raises(ValueError, match=r"compute\(\) must return JSON data .* \.item\(\)"):
        cached("rtn", {"model": "m"}, lambda: {"ppl": torch.tensor(21.5)})
    assert not results_dir().exists() or not any(results_dir().iterdir())


def test_a_truncated_quant_result_names_the_file_and_the_fix():
    compute = lambda: rtn.quantize_model(tiny_llama(), QuantSpec(bits=4, group_size=32), progress=False)
    cached_result("rtn", {"model": "tiny"}, compute)
    path = result_path("rtn", {"model": "tiny"}, ".safetensors")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(
        ValueError, match=rf"{path.name} is not a readable qviz result .* delete it to recompute"
    ):
        cached_result("rtn", {"model": "tiny"}, compute)


def test_cache_note_says_where_a_result_comes_from_and_how_to_recompute_it():
    from qviz.cache import cache_note

    params = {"model": "m", "n": 3}
    assert cache_note("demo", params, "about a minute").startswith("demo: computed now (about a minute)")
    cached("demo", params, lambda: {"x": 1})
    note = cache_note("demo", params, "about a minute")
    assert str(result_path("demo", params)) in note and "delete that file to recompute it" in note
