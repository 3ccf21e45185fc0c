"""The standalone app works in a real browser: Voilà serves app/qviz_app.ipynb, Chromium opens it, the three
explorers (memory planner, format explorer, quantization explorer) arrive drawn with the settings their controls
show, every control of every explorer changes its figure, and no error shows: not in the page, the browser's
console or the server's log, and not among the kernel's messages to the page (an exception a widget callback raises
arrives there as an iopub error that Voilà shows nowhere). No code is visible.

Two ways the figures failed in Voilà before the app handled them, which these checks catch: Voilà runs the notebook
before the page connects and draws each widget from its state, so a figure edited after it was built (every
explorer edits its own) showed its first draft; and with three plotly figures starting at once on a busy machine,
some missed anywidget's 2 s to get ready and stayed frozen while their summary lines still changed (so a summary
line that changes is not enough here). Requests to hosts other than the local server (a CDN's icon font) are
answered empty: the app must work where the projector has no internet, and a missing icon font is not an error of
the app. The screenshot of the whole page is artifacts/browser/app.png.

Without /usr/bin/chromium, playwright or voila the test skips, except under CI (CI=true), where it fails.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_browser import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    FIGURE_DATA_JS,
    _change,
    _controls,
    _error_outputs,
    _free_port,
    _require_browser,
    _wait_until,
    kill_processes_mentioning,
)

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app" / "qviz_app.ipynb"
# Generous: two busy cores, a cold kernel that imports torch and plotly.
SERVER_START_S = 120
RENDER_MS = 180_000
FIGURE_UPDATE_MS = 60_000
# What a control must change: the figure's traces, title, lines or labels (the "my GPU" line is a shape). The summary
# line alone is not enough: a figure whose front end failed to start stays frozen while its summary still changes.
FIGURE_STATE_JS = """el => JSON.stringify([el.data, el.layout.title, el.layout.shapes, el.layout.annotations],
    (k, v) => ArrayBuffer.isView(v) ? Array.from(v) : v)"""


def _require_voila():
    """Skip where voila is missing; fail instead under CI, which installs it (scripts/setup.sh)."""
    try:
        import voila  # noqa: F401
    except ImportError:
        reason = "voila is not installed: `pip install -e '.[app]'`"
    else:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"the app test must run under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def app_server(tmp_path):
    """(base URL, log file) of Voilà serving the app on a free localhost port; stopped with its kernels after."""
    _require_browser()
    _require_voila()
    kernels = tmp_path / "kernels"  # Voilà's kernels' connection files: leftover kernels are found by it
    kernels.mkdir()
    port = _free_port()
    command = [
        sys.executable, "-m", "voila", str(APP), "--no-browser", "--Voila.ip=127.0.0.1", f"--port={port}",
        "--Voila.port_retries=0", "--show_tracebacks=True", f"--Voila.connection_dir_root={kernels}",
    ]  # fmt: skip
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    log_path = tmp_path / "voila.log"
    with open(log_path, "wb") as log:
        # In pytest's process group: a `timeout` that kills the test run takes the server with it.
        server = subprocess.Popen(
            command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:  # a GET of the page would start a kernel: wait for the port instead
            if server.poll() is not None:
                pytest.fail(f"voila exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"voila not up after {SERVER_START_S}s:\n{log_path.read_text()[-3000:]}")
                time.sleep(1)
        yield f"http://127.0.0.1:{port}", log_path
    finally:
        server.terminate()  # Voilà shuts its kernels down on SIGTERM
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=15)
        kill_processes_mentioning(str(kernels))


def _figure(explorer) -> tuple[list, str]:
    """(traces, title text) of the explorer's figure, as plotly holds them in the page."""
    figure = explorer.locator(".js-plotly-plot").first
    title = figure.evaluate("el => (el.layout.title && el.layout.title.text) || ''")
    return json.loads(figure.evaluate(FIGURE_DATA_JS)), title


def _check_drawn_as_set(planner, formats, quant):
    """Each figure shows what its controls say, before anything is moved."""
    model, weights = (  # the options' labels, with their non-breaking spaces made plain
        planner.locator(".widget-dropdown select")
        .nth(i)
        .evaluate("el => el.selectedOptions[0].textContent")
        .replace("\xa0", " ")
        for i in (0, 1)
    )
    traces, _ = _figure(planner)
    assert traces[0]["y"] == [f"{model}, {weights}"], f"the planner's figure shows {traces[0]['y']}"
    traces, title = _figure(formats)
    n_bits = sum(len(t.get("x") or []) for t in traces)
    assert n_bits == 16 and "bf16" in title, f"the format explorer draws {n_bits} bits under {title!r}"
    label = quant.locator(".widget-html").first.text_content().split(",")[0]  # e.g. "INT4 sym per-channel"
    _, title = _figure(quant)
    assert label in title, f"the quantization explorer's figure says {title!r}, its summary {label!r}"


def _screenshot_whole_page(page) -> Path:
    """Voilà scrolls its cells inside a panel: make the window as tall as they are, then screenshot it."""
    height = page.evaluate(
        "() => Math.max(document.documentElement.scrollHeight,"
        " ...Array.from(document.querySelectorAll('#rendered_cells'), el => el.scrollHeight + 40))"
    )
    page.set_viewport_size({"width": 1400, "height": min(height, 6000)})
    page.wait_for_timeout(1000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "app.png"
    page.screenshot(path=str(path))
    return path


@pytest.mark.timeout(600)
def test_app_explorers_answer_in_voila(app_server):
    from playwright.sync_api import sync_playwright

    base_url, log_path = app_server
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.qviz_stem = "app"  # test_browser's helpers name their screenshots after it
            elsewhere, console = [], []

            def answer(route):
                if route.request.url.startswith(base_url):
                    route.continue_()
                else:  # offline as on a projector without internet, and quiet: an empty answer
                    elsewhere.append(route.request.url)
                    route.fulfill(status=200, body="")

            page.route("**/*", answer)
            page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda err: console.append(f"uncaught: {err}"))
            kernel_errors = []

            def watch(websocket):  # the kernel's messages to the page
                def received(payload):
                    text = payload if isinstance(payload, str) else payload.decode("utf-8", "replace")
                    if re.search(r'"msg_type":\s*"error"', text):
                        found = re.search(r'"ename":\s*"([^"]*)",\s*"evalue":\s*"([^"]*)"', text)
                        kernel_errors.append(": ".join(found.groups()) if found else text[:300])

                websocket.on("framereceived", received)

            page.on("websocket", watch)
            start = time.monotonic()
            page.goto(f"{base_url}/", timeout=RENDER_MS)
            explorers = (
                page.locator(".jp-OutputArea-output")
                .filter(has=page.locator(".js-plotly-plot"))
                .filter(has=page.locator(".widget-slider, .widget-dropdown"))
            )
            _wait_until(lambda: explorers.count() == 3, RENDER_MS, "the app's three explorers", page)
            print(f"app drawn {time.monotonic() - start:.0f} s after the request")
            text = page.locator("body").inner_text()
            assert "Will it fit?" in text, "the app's markdown is missing"
            assert "from qviz" not in text and "shown(" not in text, "the app shows its code"
            _check_drawn_as_set(*(explorers.nth(i) for i in range(3)))

            moved = []
            for e in range(explorers.count()):
                explorer = explorers.nth(e)
                explorer.scroll_into_view_if_needed()
                for kind, control in _controls(explorer):
                    figure = explorer.locator(".js-plotly-plot").first
                    before = figure.evaluate(FIGURE_STATE_JS)
                    what = _change(kind, control, page)
                    _wait_until(
                        lambda figure=figure, before=before: figure.evaluate(FIGURE_STATE_JS) != before,
                        FIGURE_UPDATE_MS, f"explorer {e}: the figure to change after {what}", page,
                    )  # fmt: skip
                    moved.append(what)
            assert len(moved) >= 10, f"too few controls found: {moved}"
            path = _screenshot_whole_page(page)
            print(f"moved {len(moved)} controls; screenshot {path}; answered empty: {sorted(set(elsewhere))}")

            errors = _error_outputs(page)
            assert not errors, "the page shows errors:\n" + "\n---\n".join(errors)
            assert not console, f"the browser console has errors after {moved}:\n" + "\n".join(console)
            assert not kernel_errors, f"the kernel sent errors after {moved}:\n" + "\n".join(kernel_errors)
            log = log_path.read_text(errors="replace")
            assert "Traceback" not in log, f"the server's log has a traceback:\n{log[-3000:]}"
        finally:
            browser.close()
