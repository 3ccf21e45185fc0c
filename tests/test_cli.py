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
