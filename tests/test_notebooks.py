"""Every tutorial notebook is committed clean and runs top to bottom headless without a warning.

A learner's first contact with qviz is a notebook: a warning or a traceback in an output cell is a bug
even when the cell "worked". Each notebook is executed with nbclient on the Jupyter kernel named
``python3`` (the interpreter running pytest, see ``test_python3_kernel_is_this_interpreter``) and with
``QVIZ_FAST=1`` so that notebooks may pick smaller settings for the test run.

Progress bars: notebooks report progress through ``tqdm.auto``, which renders as an ipywidget (a
``display_data`` output) inside a kernel, so it never writes to stderr. Plain-text tqdm bars written to
stderr are tolerated only when every line of the stream is a bar; any other stderr text fails.
"""

import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
IDS = [path.name for path in NOTEBOOKS]

KERNEL_NAME = "python3"
CELL_TIMEOUT_S = 600  # one cell on a busy 2-core CPU, loading a real model included
NOTEBOOK_TIMEOUT_S = 1200  # the whole notebook, enforced by pytest-timeout
STARTUP_TIMEOUT_S = 180  # kernel start while other processes compete for the CPU

# A tqdm text bar line: "label:  42%|####      | 42/100 [00:01<00:02, 30.1it/s]"
TQDM_LINE = re.compile(r"^.*\d+%\|.*\|.*$")
ALARMING = re.compile(r"Traceback|\w*Warning\b")


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _is_progress_bar(text: str) -> bool:
    lines = [line for line in re.split(r"[\r\n]+", text) if line.strip()]
    return bool(lines) and all(TQDM_LINE.match(line) for line in lines)


def _output_problems(nb: nbformat.NotebookNode) -> list[str]:
    """One line per output that a learner should not see: errors, stderr, warnings, tracebacks."""
    problems = []
    code_cells = (cell for cell in nb.cells if cell.cell_type == "code")
    for number, cell in enumerate(code_cells, start=1):
        first_line = cell.source.strip().split("\n")[0][:60]
        where = f"code cell {number} ({first_line!r})"
        # tqdm splits one bar over several stderr outputs: judge the cell's stderr as a whole
        stderr = "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stderr")
        if stderr.strip() and not _is_progress_bar(stderr):
            problems.append(f"{where}: stderr: {stderr.strip()[:500]}")
        for output in cell.outputs:
            if output.output_type == "error":
                problems.append(f"{where}: {output.ename}: {output.evalue}")
                continue
            if output.output_type == "stream":
                if output.name == "stderr":
                    continue  # judged above, as a whole
                text = output.text
            else:
                text = output.get("data", {}).get("text/plain", "")
            match = ALARMING.search(text)
            if match:
                problems.append(f"{where}: output mentions {match.group(0)!r}: {text.strip()[:500]}")
    return problems


def _execute(nb: nbformat.NotebookNode, cwd: Path) -> nbformat.NotebookNode:
    client = NotebookClient(
        nb,
        kernel_name=KERNEL_NAME,
        timeout=CELL_TIMEOUT_S,
        startup_timeout=STARTUP_TIMEOUT_S,
        resources={"metadata": {"path": str(cwd)}},
    )
    return client.execute()


def test_notebooks_exist():
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"


def test_python3_kernel_is_this_interpreter(tmp_path):
    """The kernel named python3 runs in this environment (the venv with qviz), not some other Python."""
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.prefix)"))
    executed = _execute(nb, tmp_path)
    kernel_prefix = executed.cells[0].outputs[0].text.strip()
    # sys.prefix, not the resolved executable: every venv's python links to the same base interpreter
    assert Path(kernel_prefix) == Path(sys.prefix), (
        f"kernel {KERNEL_NAME!r} runs in {kernel_prefix}, tests run in {sys.prefix}: "
        "run scripts/setup.sh, or check `jupyter kernelspec list`"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_kernelspec_is_python3(path):
    kernelspec = _read(path).metadata.get("kernelspec", {})
    assert kernelspec.get("name") == KERNEL_NAME, f"{path.name}: kernelspec {kernelspec!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_committed_stripped(path):
    nb = _read(path)
    dirty = [
        number
        for number, cell in enumerate(nb.cells, start=1)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, (
        f"{path.name}: cells {dirty} have outputs or execution counts; strip them with "
        f"`.venv/bin/jupyter nbconvert --clear-output --inplace notebooks/{path.name}`"
    )
    assert "widgets" not in nb.metadata, f"{path.name}: saved widget state in metadata; clear it"


@pytest.mark.timeout(NOTEBOOK_TIMEOUT_S)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_clean(path, monkeypatch):
    monkeypatch.setenv("QVIZ_FAST", "1")  # the kernel inherits this process's environment
    executed = _execute(_read(path), path.parent)
    problems = _output_problems(executed)
    assert not problems, f"{path.name} ran with problems:\n" + "\n".join(problems)


def test_progress_bar_detection():
    bar = "\r  0%|          | 0/4 [00:00<?, ?it/s]\r 50%|#####     | 2/4 [00:01<00:01, 1.9it/s]\n"
    assert _is_progress_bar(bar)
    assert not _is_progress_bar("/x.py:3: UserWarning: careful\n  warnings.warn('careful')\n")
    assert not _is_progress_bar(bar + "something else\n")
