"""Notebook 02 works in a real browser: JupyterLab, Run All, move a slider, the figure changes.

Headless execution (test_notebooks.py) cannot see the front end: whether the widgets render, whether a
slider reaches the kernel and whether the FigureWidget redraws. This test drives JupyterLab 4 in
Debian's Chromium through Playwright, as a learner would: open the notebook, wait for the kernel,
Run All Cells from the menu, press ArrowRight on a slider handle, and compare the plotly traces before
and after. A screenshot is kept in artifacts/browser/.

Without /usr/bin/chromium the test skips, except under CI (CI=true), where it fails.
Point it at another notebook with QVIZ_BROWSER_NOTEBOOK=path/to/notebook.ipynb; QVIZ_BROWSER_PAGES=1 also
screenshots the whole notebook, screen by screen, for reading it through.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = Path(os.environ.get("QVIZ_BROWSER_NOTEBOOK", ROOT / "notebooks" / "02_linear_quantization.ipynb"))
ARTIFACTS = ROOT / "artifacts" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Generous: two busy cores, a cold JupyterLab and a notebook that computes before it draws.
SERVER_START_S = 180
PAGE_LOAD_MS = 180_000
KERNEL_IDLE_MS = 180_000
RUN_ALL_MS = 900_000
FIGURE_UPDATE_MS = 120_000


def _require_browser():
    """Skip with a clear message where the browser is missing; fail instead under CI."""
    reason = None
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} not found: install Debian's chromium (`apt-get install -y chromium`)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "playwright is not installed: `pip install -e '.[test]'`"
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser test must run under CI: {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains text (here: our private runtime dir, used by our kernels)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _stop(server: subprocess.Popen, base_url: str, token: str, runtime_dir: Path):
    """Ask the server to shut down (it stops its kernels), then make sure: TERM, KILL, leftover kernels."""
    try:
        request = urllib.request.Request(
            f"{base_url}/api/shutdown", method="POST", headers={"Authorization": f"token {token}"}
        )
        urllib.request.urlopen(request, timeout=10)
    except (urllib.error.URLError, OSError):
        pass
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=15)
    # Kernels run in their own sessions; they carry their connection file from our runtime dir.
    for pid in _processes_mentioning(str(runtime_dir)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def notebook_url(tmp_path):
    """URL of NOTEBOOK in a private JupyterLab on a free localhost port, serving a copy of its folder."""
    _require_browser()
    if not NOTEBOOK.exists():
        pytest.fail(f"{NOTEBOOK} does not exist")
    root_dir = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOK.parent, root_dir)  # autosave must never touch the committed notebooks
    runtime_dir = tmp_path / "runtime"
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(
        os.environ,
        QVIZ_FAST="1",
        JUPYTER_RUNTIME_DIR=str(runtime_dir),
        JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),  # no user settings leak in
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
    )
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root_dir}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    log_path = tmp_path / "jupyterlab.log"
    base_url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        # In pytest's process group: a `timeout` that kills the test run takes the server with it.
        server = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{base_url}/api/status?token={token}", timeout=5)
                break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab not up after {SERVER_START_S}s:\n{log_path.read_text()[-3000:]}")
                time.sleep(1)
        yield f"{base_url}/lab/tree/{NOTEBOOK.name}?token={token}"
    finally:
        _stop(server, base_url, token, runtime_dir)


# JavaScript run in the page. Plotly keeps a figure's traces on its div as `.data`; typed arrays are
# turned into plain arrays so the snapshot is comparable JSON.
FIGURE_DATA_JS = "el => JSON.stringify(el.data, (k, v) => ArrayBuffer.isView(v) ? Array.from(v) : v)"
PROMPTS_JS = """() => Array.from(document.querySelectorAll(
    '.jp-Notebook .jp-CodeCell .jp-InputPrompt')).map(p => p.textContent.trim())"""
STDERR_JS = """() => Array.from(document.querySelectorAll(
    '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')).map(o => o.textContent)"""


def _all_cells_done(page) -> bool:
    prompts = page.evaluate(PROMPTS_JS)
    return bool(prompts) and all(p.startswith("[") and p[1:-2].isdigit() for p in prompts)


def _error_outputs(page) -> list[str]:
    return [text[:800] for text in page.evaluate(STDERR_JS) if "Traceback" in text or "Error" in text]


def _wait_until(predicate, timeout_ms: int, what: str, page):
    deadline = time.monotonic() + timeout_ms / 1000
    while not predicate():
        if time.monotonic() > deadline:
            _screenshot(page, "timeout")
            pytest.fail(f"timed out after {timeout_ms / 1000:.0f}s waiting for {what}")
        page.wait_for_timeout(500)


def _wait_for_idle_kernel(page):
    """Wait for the notebook's kernel to be idle, answering JupyterLab's kernel chooser if it shows.

    On a busy machine the notebook can open before JupyterLab has listed the kernelspecs; it then asks
    which kernel to start (preselecting the notebook's python3), as it would ask a learner.
    """
    idle = page.locator(".jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status='idle']")
    chooser = page.locator(".jp-Dialog", has_text="Select Kernel")
    deadline = time.monotonic() + KERNEL_IDLE_MS / 1000
    settled_since = None
    while True:
        if chooser.count():
            chooser.locator(".jp-Dialog-button.jp-mod-accept").click()
            settled_since = None
        elif idle.count():
            settled_since = settled_since or time.monotonic()
            if time.monotonic() - settled_since > 3:  # idle, and no chooser popped up meanwhile
                return
        if time.monotonic() > deadline:
            _screenshot(page, "timeout")
            pytest.fail(f"kernel not idle after {KERNEL_IDLE_MS / 1000:.0f}s")
        page.wait_for_timeout(500)


def _screenshot(page, suffix: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{NOTEBOOK.stem}-{suffix}.png"
    page.screenshot(path=str(path))
    return path


def _screenshot_pages(page) -> None:
    """Scroll the notebook from top to bottom, one screen per screenshot: <stem>-page-NN.png."""
    scroller = page.locator(".jp-NotebookPanel .jp-WindowedPanel-outer").first
    height = scroller.evaluate("el => el.scrollHeight")
    step = scroller.evaluate("el => el.clientHeight") - 80  # keep a little overlap between screens
    for n, top in enumerate(range(0, height, step)):
        scroller.evaluate(f"el => el.scrollTo(0, {top})")
        page.wait_for_timeout(700)  # windowed rendering draws the cells that came into view
        _screenshot(page, f"page-{n:02d}")


@pytest.mark.timeout(1800)
def test_slider_updates_figure_in_jupyterlab(notebook_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(notebook_url, timeout=PAGE_LOAD_MS)
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=PAGE_LOAD_MS)
            _wait_for_idle_kernel(page)

            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            page.wait_for_timeout(2000)  # let the first prompts turn into [*]
            _wait_until(lambda: _all_cells_done(page), RUN_ALL_MS, "Run All to finish", page)
            errors = _error_outputs(page)
            assert not errors, "cells show errors after Run All:\n" + "\n---\n".join(errors)
            if os.environ.get("QVIZ_BROWSER_PAGES"):  # the whole notebook, screen by screen, to read it
                _screenshot_pages(page)

            # The first cell output holding both a slider and a plotly figure: an explorer widget.
            explorer = page.locator(".jp-OutputArea", has=page.locator(".widget-slider")).filter(
                has=page.locator(".js-plotly-plot")
            )
            assert explorer.count() > 0, "no cell output shows a slider next to a plotly figure"
            explorer = explorer.first
            explorer.scroll_into_view_if_needed()
            figure = explorer.locator(".js-plotly-plot").first
            slider = explorer.locator(".widget-slider").first
            handle = slider.locator(".noUi-handle").first
            readout = slider.locator(".widget-readout").first

            before = figure.evaluate(FIGURE_DATA_JS)
            value_before = readout.text_content()
            handle.focus()
            handle.press("ArrowRight")
            if readout.text_content() == value_before:  # already at the maximum
                handle.press("ArrowLeft")
            value_after = readout.text_content()
            assert value_after != value_before, f"slider readout stayed at {value_before!r}"
            _wait_until(
                lambda: figure.evaluate(FIGURE_DATA_JS) != before,
                FIGURE_UPDATE_MS,
                f"the figure to change after the slider moved {value_before} -> {value_after}",
                page,
            )
            figure.scroll_into_view_if_needed()
            shot = _screenshot(page, "slider-moved")
            assert shot.stat().st_size > 0
            errors = _error_outputs(page)
            assert not errors, "cells show errors after moving the slider:\n" + "\n---\n".join(errors)
            assert json.loads(figure.evaluate(FIGURE_DATA_JS)), "figure has no traces"
        finally:
            browser.close()
