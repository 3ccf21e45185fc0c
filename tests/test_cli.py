"""qviz command line: `qviz doctor` reports every check as an OK/MISSING line with a hint."""

import pytest

from qviz import cli, models


def test_doctor_reports_versions_models_texts_and_widgets(capsys):
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert all(line.startswith(("OK ", "MISSING ", "all checks OK")) or "missing" in line for line in lines)
    for needle in (
        "python",
        "torch",
        "transformers",
        "device",
        "CUDA",
        "gemma-3-270m",
        "smollm2-135m",
        "text britannica",
        "text pydoc",
        "ipywidgets",
        "anywidget",
        "jupyterlab_widgets",
        "@jupyter-widgets/jupyterlab-manager",
    ):
        assert needle in out, needle


def test_doctor_flags_missing_cache_with_a_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QVIZ_CACHE", str(tmp_path))  # an empty cache: nothing converted yet
    checks = cli.doctor_checks()
    missing = [text for ok, text in checks if not ok]
    for name in models.OFFLINE_MODELS:
        if models.is_installed(name):
            assert any(f"cache {name}" in t and "load_model" in t for t in missing)
    assert cli.main(["doctor", "--strict"]) == (1 if missing else 0)
    assert "MISSING" in capsys.readouterr().out


def test_no_subcommand_prints_help(capsys):
    assert cli.main([]) == 2
    assert "doctor" in capsys.readouterr().out


def test_unknown_subcommand_exits_with_usage():
    with pytest.raises(SystemExit):
        cli.main(["frobnicate"])


@pytest.mark.slow
def test_prepare_runs_the_notebooks_and_reports_their_times(capsys):
    assert cli.main(["prepare", "--notebooks", "01"]) == 0
    out = capsys.readouterr().out
    assert "01_numbers.ipynb done in" in out and "every cache is warm" in out


def test_prepare_without_notebooks_says_where_they_come_from(monkeypatch, capsys):
    monkeypatch.setattr(
        cli, "notebooks_dir", lambda: (_ for _ in ()).throw(ValueError("no notebooks at /x: clone"))
    )
    assert cli.main(["prepare"]) == 2
    assert "no notebooks at /x" in capsys.readouterr().err


def fake_cache(name, drop=(), truncate=False):
    """The converted cache of offline model `name` as files (config, tokenizer, weights, marker): the doctor
    reads their presence and the weights' header, not the model."""
    import json

    import torch
    from safetensors.torch import save_file

    folder = models.cached_model_dir(name)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "tokenizer.json").write_text("{}")
    save_file({"w": torch.zeros(64, 64)}, str(folder / "model.safetensors"))
    marker = {"format": models._CACHE_FORMAT, "source": models.OFFLINE_MODELS[name].package}
    (folder / "qviz.json").write_text(json.dumps(marker))
    if truncate:
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-1000])
    for f in drop:
        (folder / f).unlink()
    return folder


@pytest.mark.parametrize(
    "drop, truncate, message",
    [
        ((), False, None),
        (("model.safetensors",), False, "has no weights file"),
        ((), True, "model.safetensors is unreadable"),
        (("qviz.json",), False, "qviz.json is missing"),
        (("tokenizer.json",), False, "has no tokenizer files"),
    ],
    ids=["complete", "no-weights", "truncated-weights", "no-marker", "no-tokenizer"],
)
def test_doctor_reports_a_cache_ok_only_when_its_files_are_there(
    tmp_path, monkeypatch, drop, truncate, message
):
    """The issue's example: a cache whose weights file was missing was reported OK (only qviz.json was read)."""
    monkeypatch.setenv("QVIZ_CACHE", str(tmp_path))
    name = next((n for n in models.OFFLINE_MODELS if models.is_installed(n)), None)
    if name is None:
        pytest.skip("no offline model package installed")
    folder = fake_cache(name, drop, truncate)
    (line,) = [(ok, text) for ok, text in cli.doctor_checks() if f"cache {name}:" in text]
    if message is None:
        assert line == (True, f"OK      cache {name}: converted cache at {folder}")
    else:
        assert not line[0] and message in line[1] and f"-> delete {folder}, then python -c" in line[1]
