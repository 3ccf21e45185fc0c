"""scripts/slides.py (`make slides`): every notebook builds to reveal.js slides, one slide per "## " section.

The notebooks carry no slide metadata: the build takes each cell's slide type from the notebook's structure. The
rules are checked on a small notebook with a known answer; then every notebook of notebooks/ is built once, as
`make slides` does, into a temporary folder, and its HTML is read back: reveal.js's slide sections, the title on
the first slide and in the page's <title>, and each "## " heading of the notebook opening a slide of its own, in
order.
"""

import importlib.util
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _load_script():
    spec = importlib.util.spec_from_file_location("slides_script", ROOT / "scripts" / "slides.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


slides = _load_script()


def test_markdown_is_cut_before_each_heading_outside_code():
    source = "intro\n\n## 1. One\ntext\n```python\n## a comment\n```\n### 1.1 Sub\nmore\n#### small"
    assert slides.split_at_headings(source) == [
        "intro",
        "## 1. One\ntext\n```python\n## a comment\n```",
        "### 1.1 Sub\nmore\n#### small",
    ]


@pytest.mark.parametrize(
    "source, setup",
    [
        ("import torch\n\nfrom qviz import quant", True),
        ("import os\nFAST = os.environ.get('QVIZ_FAST') == '1'\nSPEC, N = 1, 2", True),
        ("LIMIT: int = 3", True),
        ("x = 1", False),
        ("import torch\nprint(torch.ones(2))", False),
        ("def f():\n    pass", False),
        ("%matplotlib inline", False),
        ("", False),
    ],
    ids=["imports", "settings", "annotated", "lowercase", "import+print", "def", "magic", "empty"],
)
def test_setup_cells(source, setup):
    assert slides.is_setup(source) is setup


def test_slide_types_of_a_small_notebook():
    nb = new_notebook(
        cells=[
            new_markdown_cell("# The title\n\nintro"),
            new_code_cell("import torch"),
            new_markdown_cell("## 1. One\n\ntext\n\n## 2. Two\nmore"),
            new_code_cell("x = torch.ones(2)"),
            new_code_cell("x + 1"),
            new_markdown_cell("### Exercise\nsay"),
            new_code_cell(""),
            new_code_cell("answer = 0"),
        ]
    )
    before = nbformat.writes(nb)
    out, _ = slides.SlideTypes().preprocess(nb, {})
    assert [c.metadata["slideshow"]["slide_type"] for c in out.cells] == [
        "slide", "skip", "slide", "slide", "-", "subslide", "subslide", "skip", "-",
    ]  # fmt: skip
    assert [c.source for c in out.cells[2:4]] == ["## 1. One\n\ntext", "## 2. Two\nmore"]
    assert out.metadata["title"] == "The title"
    assert len({c.id for c in out.cells}) == len(out.cells), "cell ids must stay unique"
    assert nbformat.writes(nb) == before, "the notebook itself must not change"


class _Slides(HTMLParser):
    """Reads the slides page: its <title>, and the headings (h1/h2) of each top-level <section>, i.e. each slide
    (a slide's sub-slides are <section>s inside it). The heading's anchor link (¶) is left out."""

    def __init__(self):
        super().__init__()
        self.title, self.slides = "", []
        self._depth, self._heading, self._in_title, self._in_anchor = 0, None, False, False

    def handle_starttag(self, tag, attrs):
        if tag == "section":
            self._depth += 1
            if self._depth == 1:
                self.slides.append([])
        elif tag in ("h1", "h2") and self._depth:
            self._heading = [tag, ""]
            self.slides[-1].append(self._heading)
        elif tag == "a" and "anchor-link" in (dict(attrs).get("class") or ""):
            self._in_anchor = True
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag):
        if tag == "section":
            self._depth -= 1
        elif tag in ("h1", "h2"):
            self._heading = None
        elif tag == "a":
            self._in_anchor = False
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        if self._heading is not None and not self._in_anchor:
            self._heading[1] += data


def _plain(text: str) -> str:
    return " ".join(text.split())


def _prefix(heading: str) -> str:
    """The heading's words up to its first markup (`code`, **bold**, $math$, [link]): they render as written."""
    return _plain(re.split(r"[`*$_\[<&\\]", heading, maxsplit=1)[0])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every notebook built by the script, as `make slides` runs it, into a temporary folder."""
    out = tmp_path_factory.mktemp("slides")
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "slides.py"), "--out", str(out), *map(str, NOTEBOOKS)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_builds_to_slides(notebook, built):
    page = (built / f"{notebook.stem}.slides.html").read_text(encoding="utf-8")
    assert 'class="reveal"' in page and 'class="slides"' in page and "reveal.js" in page
    parsed = _Slides()
    parsed.feed(page)

    markdown = [c.source for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "markdown"]
    titles = [line[2:] for text in markdown for line in text.splitlines() if line.startswith("# ")]
    sections = [line[3:] for text in markdown for line in text.splitlines() if line.startswith("## ")]
    assert titles and sections, f"{notebook.name} has no '# ' title or no '## ' section"
    title = _plain(titles[0])
    assert _plain(parsed.title).startswith(title), f"page title {parsed.title!r}"
    first = parsed.slides[0][0] if parsed.slides and parsed.slides[0] else ["", ""]
    assert first[0] == "h1" and _plain(first[1]) == title, f"the first slide opens with {first}"

    opened = [_plain(s[0][1]) for s in parsed.slides[1:] if s and s[0][0] == "h2"]  # slides a "## " opens
    assert len(parsed.slides) >= 1 + len(sections), f"{len(parsed.slides)} slides, {len(sections)} sections"
    assert len(opened) == len(sections), f"slides opened by a section: {opened}"
    for heading, shown in zip(sections, opened):
        assert shown.startswith(_prefix(heading)), f"section {heading!r} opens a slide showing {shown!r}"
