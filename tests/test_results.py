import json

import pytest

from qviz.results import cached, results_dir


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
    assert not results_dir().exists() or not any(results_dir().iterdir())
