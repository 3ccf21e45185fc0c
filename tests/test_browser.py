"""The widget notebooks work in a real browser: JupyterLab, Run All, every control of every explorer moved, the
figure answers, and nothing lands in JupyterLab's log console.

Headless execution (test_notebooks.py) cannot see the front end: whether the widgets render, whether a
control reaches the kernel and whether the FigureWidget redraws, nor errors that a widget's callback raises
(they go to JupyterLab's log console, not to a cell). This test drives JupyterLab 4 in Debian's Chromium
through Playwright, as a learner would: open the notebook, wait for the kernel, Run All Cells from the menu,
then change every slider, dropdown, toggle and checkbox of every explorer (one step each) and wait for its
figure or its summary line to change; the log console's counter must stay empty. Screenshots are kept in
artifacts/browser/. The browser tests run after the rest (conftest.py), when the notebooks' caches are warm.

Without /usr/bin/chromium the test skips, except under CI (CI=true), where it fails.
QVIZ_BROWSER_NOTEBOOK=path/to/notebook.ipynb runs one notebook; QVIZ_BROWSER_PAGES=1 also screenshots the whole
notebook, screen by screen, for reading it through.
"""

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
WIDGET_NOTEBOOKS = [  # the notebooks with explorers
    ROOT / "notebooks" / name
    for name in (
        "01_numbers.ipynb",
        "02_linear_quantization.ipynb",
        "03_real_weights.ipynb",
        "05_gptq.ipynb",
        "06_awq.ipynb",
        "08_activations.ipynb",
        "09_formats.ipynb",
        "10_qat_and_tasks.ipynb",
        "11_choose_and_ship.ipynb",
    )
]
NOTEBOOKS = (
    [Path(os.environ["QVIZ_BROWSER_NOTEBOOK"]).resolve()]
    if os.environ.get("QVIZ_BROWSER_NOTEBOOK")
    else WIDGET_NOTEBOOKS
)
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


def kill_processes_mentioning(text: str) -> None:
    """SIGKILL every process whose command line contains text: kernels a stopped server left behind."""
    for pid in _processes_mentioning(text):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


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
    kill_processes_mentioning(str(runtime_dir))


@pytest.fixture(params=NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def notebook_url(request, tmp_path):
    """URL of the notebook in a private JupyterLab on a free localhost port, serving a copy of its folder."""
    _require_browser()
    notebook = request.param
    if not notebook.exists():
        pytest.fail(f"{notebook} does not exist")
    root_dir = tmp_path / "notebooks"
    shutil.copytree(notebook.parent, root_dir)  # autosave must never touch the committed notebooks
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
        yield f"{base_url}/lab/tree/{notebook.name}?token={token}", notebook.stem
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
    path = ARTIFACTS / f"{getattr(page, 'qviz_stem', 'notebook')}-{suffix}.png"
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


LOG_CONSOLE_COUNT_JS = """() => {
    const item = document.querySelector('.jp-LogConsoleStatusItem');
    return item ? item.textContent.trim() : '';
}"""
LOG_ENTRIES_JS = """() => Array.from(document.querySelectorAll('.jp-LogConsolePanel .jp-OutputArea-output'))
    .map(o => o.textContent.slice(0, 600))"""


def _log_console_errors(page) -> list[str]:
    """What JupyterLab's log console holds (errors a widget callback raised, for one): its status-bar counter
    shows how many; the entries are read by opening the console."""
    count = page.evaluate(LOG_CONSOLE_COUNT_JS)
    if not count or count == "0":
        return []
    page.locator(".jp-LogConsoleStatusItem").first.click()
    page.wait_for_timeout(1500)
    return page.evaluate(LOG_ENTRIES_JS) or [f"{count} log console entries (not readable)"]


def _explorer_state(explorer):
    """What a control change must alter: the figure's traces, or else the summary line (a control such as GPTQ's
    block size changes no number, but the summary reports the new computation)."""
    figure = explorer.locator(".js-plotly-plot").first
    summary = explorer.locator(".widget-html").first
    return figure.evaluate(FIGURE_DATA_JS), (summary.text_content() if summary.count() else "")


def _controls(explorer) -> list[tuple[str, object]]:
    """(kind, locator) of every control in an explorer's output."""
    found = []
    for kind, selector in (
        ("slider", ".widget-slider"),
        ("dropdown", ".widget-dropdown select"),
        ("toggle", ".widget-toggle-buttons"),
        ("checkbox", ".widget-checkbox input[type=checkbox]"),
        ("text", ".widget-text input"),
    ):
        found += [
            (kind, explorer.locator(selector).nth(i)) for i in range(explorer.locator(selector).count())
        ]
    return found


def _change(kind: str, control, page) -> str:
    """Move one control one step, as a learner would; returns what was done."""
    if kind == "slider":
        handle, readout = control.locator(".noUi-handle").first, control.locator(".widget-readout").first
        before = readout.text_content()
        handle.focus()
        handle.press("ArrowRight")
        if readout.text_content() == before:  # at the maximum
            handle.press("ArrowLeft")
        return f"slider {before} -> {readout.text_content()}"
    if kind == "dropdown":
        options = control.locator("option")
        values = [options.nth(i).get_attribute("value") for i in range(options.count())]
        current = control.evaluate("el => el.value")
        target = values[(values.index(current) + 1) % len(values)] if current in values else values[0]
        control.select_option(value=target)
        return f"dropdown {current} -> {target}"
    if kind == "toggle":
        buttons = control.locator("button")
        inactive = [
            i
            for i in range(buttons.count())
            if "mod-active" not in (buttons.nth(i).get_attribute("class") or "")
        ]
        buttons.nth(inactive[0]).click()
        return f"toggle -> {buttons.nth(inactive[0]).text_content()}"
    if kind == "checkbox":
        control.click()
        return "checkbox clicked"
    control.fill("0.3")
    control.press("Enter")
    return "text -> 0.3"


@pytest.mark.timeout(2400)
def test_every_control_answers_in_jupyterlab(notebook_url):
    from playwright.sync_api import sync_playwright

    url, stem = notebook_url
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.qviz_stem = stem
            page.goto(url, timeout=PAGE_LOAD_MS)
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

            # Every cell output holding a control next to a plotly figure: an explorer widget.
            explorers = (
                page.locator(".jp-OutputArea-output")
                .filter(has=page.locator(".js-plotly-plot"))
                .filter(
                    has=page.locator(
                        ".widget-slider, .widget-dropdown, .widget-toggle-buttons, .widget-checkbox"
                    )
                )
            )
            assert explorers.count() > 0, "no cell output shows a control next to a plotly figure"
            moved = []
            for e in range(explorers.count()):
                explorer = explorers.nth(e)
                explorer.scroll_into_view_if_needed()
                for kind, control in _controls(explorer):
                    before = _explorer_state(explorer)
                    what = _change(kind, control, page)
                    _wait_until(
                        lambda explorer=explorer, before=before: _explorer_state(explorer) != before,
                        FIGURE_UPDATE_MS, f"explorer {e}: the figure or summary to change after {what}", page,
                    )  # fmt: skip
                    moved.append(what)
                _screenshot(page, f"explorer-{e}")
            assert moved, "no control found in the explorers"
            errors = _error_outputs(page)
            assert not errors, "cells show errors after moving the controls:\n" + "\n---\n".join(errors)
            logged = _log_console_errors(page)
            assert not logged, f"JupyterLab's log console has entries after {moved}:\n" + "\n---\n".join(
                logged
            )
        finally:
            browser.close()
