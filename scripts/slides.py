"""Reveal.js slides of the tutorial's notebooks: `jupyter nbconvert --to slides`, with every cell's slide type
chosen from the notebook's structure when the slides are built, so the notebooks themselves carry no slide metadata.

    .venv/bin/python scripts/slides.py [NOTEBOOK ...] [--out build/slides]      (what `make slides` runs)

Without NOTEBOOK it builds every notebooks/NN_*.ipynb. The rules (`SlideTypes`):
  - a markdown cell is cut before every heading line (#, ## or ###), so each heading starts its own piece;
  - "# " (the title) and "## " (a section) start a slide; "### " and any other markdown start a sub-slide,
    stacked below the section's slide (reveal.js: the down arrow);
  - a code cell stays on the slide of the text before it; a second code cell in a row starts a sub-slide;
  - a code cell that only sets things up (imports, UPPER_CASE settings such as FAST = ...) is skipped, and so is
    an empty cell.
The notebooks are not executed: the slides show the code, not its output. A slide taller than the screen scrolls.
reveal.js and MathJax come from their CDNs, as nbconvert's template has it: showing the slides needs internet.
"""

import argparse
import ast
import copy
import re
import sys
from pathlib import Path

import nbformat
from nbconvert import SlidesExporter
from nbconvert.preprocessors import Preprocessor
from traitlets.config import Config

ROOT = Path(__file__).resolve().parents[1]
HEADING = re.compile(r"^(#{1,3}) \S")  # the heading levels that start a slide or a sub-slide
FENCE = re.compile(r"^\s*(```|~~~)")


def split_at_headings(source: str) -> list[str]:
    """The markdown `source` cut before every heading line of level 1 to 3 (outside fenced code); no empty pieces.

    >>> split_at_headings("text\\n\\n## 2. Next\\nmore")
    ['text', '## 2. Next\\nmore']
    """
    pieces, lines, fenced = [], [], False
    for line in source.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        if HEADING.match(line) and not fenced and lines:
            pieces.append("\n".join(lines))
            lines = []
        lines.append(line)
    pieces.append("\n".join(lines))
    return [piece.strip("\n") for piece in pieces if piece.strip()]


def _is_setting(target: ast.expr) -> bool:
    if isinstance(target, ast.Tuple):
        return all(_is_setting(t) for t in target.elts)
    return isinstance(target, ast.Name) and target.id.isupper()


def is_setup(source: str) -> bool:
    """Does this code only set things up: imports and UPPER_CASE settings (FAST = ..., SPEC, N = ...)?
    Code that does not parse as Python (IPython magics) counts as content."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return False
    return bool(body) and all(
        isinstance(node, ast.Import | ast.ImportFrom)
        or (isinstance(node, ast.Assign) and all(_is_setting(t) for t in node.targets))
        or (isinstance(node, ast.AnnAssign) and _is_setting(node.target))
        for node in body
    )


def slide_types(cells: list) -> list[str]:
    """The slide type of each cell (cells already cut at their headings): "slide", "subslide", "-" (on the
    slide before) or "skip"."""
    types, previous = [], None  # previous: the kind of the last cell shown
    for cell in cells:
        source = cell.source.strip()
        if cell.cell_type == "markdown" and source:
            heading = HEADING.match(source)
            types.append("slide" if heading and len(heading.group(1)) <= 2 else "subslide")
        elif cell.cell_type == "code" and source and not is_setup(source):
            types.append("subslide" if previous == "code" else "-")
        else:  # empty cells, set-up code, raw cells
            types.append("skip")
            continue
        previous = cell.cell_type
    return types


class SlideTypes(Preprocessor):
    """Sets every cell's `slideshow.slide_type` by the rules of this module, after cutting markdown cells at their
    headings, and the notebook's `title` (its "# " heading) for the page's <title>. Runs on a copy of the notebook:
    the file is never changed."""

    def preprocess(self, nb, resources):
        nb = copy.deepcopy(nb)
        cells = []
        for cell in nb.cells:
            pieces = split_at_headings(cell.source) if cell.cell_type == "markdown" else []
            if len(pieces) < 2:
                cells.append(cell)
                continue
            for k, piece in enumerate(pieces):
                part = nbformat.v4.new_markdown_cell(piece, metadata=copy.deepcopy(cell.metadata))
                if "attachments" in cell:
                    part.attachments = cell.attachments
                if "id" in cell:
                    part.id = f"{cell.id}-{k}"  # unique, and the same at every build
                cells.append(part)
        for cell, kind in zip(cells, slide_types(cells)):
            cell.metadata["slideshow"] = {"slide_type": kind}
        titles = [c.source for c in cells if c.cell_type == "markdown" and c.source.startswith("# ")]
        if titles:
            nb.metadata["title"] = titles[0].splitlines()[0][2:].strip()
        nb.cells = cells
        return nb, resources


def build(notebooks: list[Path], out: Path) -> list[Path]:
    """Write out/<stem>.slides.html for each notebook; returns the files written."""
    config = Config()
    config.SlidesExporter.preprocessors = [SlideTypes]  # before the reveal template's own preprocessor
    config.SlidesExporter.reveal_scroll = True  # a long code cell scrolls instead of running off the slide
    config.SlidesExporter.exclude_input_prompt = True  # no "In [ ]:" beside the code of a notebook never run
    exporter = SlidesExporter(config=config)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for notebook in notebooks:
        body, _ = exporter.from_filename(str(notebook))
        target = out / f"{notebook.stem}.slides.html"
        target.write_text(body, encoding="utf-8")
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/NN_*.ipynb")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "slides", help="default: build/slides")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    for notebook, target in zip(notebooks, build(notebooks, args.out)):
        print(f"{notebook.name} -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
