"""Every exercise of every notebook has a worked solution, and each solution passes the notebook's own check.

The exercises are found in the notebooks themselves: the headings "### Exercise N" ("### Exercise 1 and 2",
a lone "### Exercise", or notebook 01's bold "**N.**" items), and the code cells that call `nbNN.check_...`.
A solution runs the way a learner runs it: its code, then the check statement of the exercise's cell, in a
namespace holding the notebook's imports (its first code cell, run here) and small stand-ins for the values the
notebook computed before the exercise (real statistics of a tiny model, synthetic tables). The exercise's own
placeholder answer must fail the same check, so a check that passes everything cannot hide a wrong solution.
"""

import ast
import functools
import json
import re
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_llama

from qviz.awq_scale import awq_linear
from qviz.exercises import solution
from qviz.exercises.solutions import SOLUTIONS
from qviz.quant import QuantSpec
from qviz.stats import activation_stats, named_linears, outlier_ratio

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = {path.name[:2]: path for path in sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))}
HEADING = re.compile(
    r"^#+\s+Exercise\b(?!s)(.*)$"
)  # "### Exercise 3", "### Exercise 1 and 2", "### Exercise"
BOLD_ITEM = re.compile(r"^\*\*(\d+)\.\*\*")  # notebook 01: "**3.** What is the largest ..."


def _cells(notebook: str) -> list[tuple[str, str]]:
    cells = json.loads(NOTEBOOKS[notebook].read_text(encoding="utf-8"))["cells"]
    return [(c["cell_type"], "".join(c["source"])) for c in cells]


def _exercise_numbers(notebook: str) -> list[int]:
    numbers = []
    for kind, text in _cells(notebook):
        for line in text.splitlines() if kind == "markdown" else []:
            if heading := HEADING.match(line):
                numbers += [int(n) for n in re.findall(r"\d+", heading.group(1))] or [1]
            elif item := BOLD_ITEM.match(line):
                numbers.append(int(item.group(1)))
    return numbers


def _check_cells(notebook: str) -> list[str]:
    """The code cells that call one of the notebook's checks, in order: one per exercise."""
    calls = re.compile(rf"\bnb{notebook}\.check_\w+\(")
    return [text for kind, text in _cells(notebook) if kind == "code" and calls.search(text)]


@functools.cache
def _imports(notebook: str) -> dict:
    """What the notebook's first code cell (its imports) defines."""
    namespace: dict = {}
    exec(next(text for kind, text in _cells(notebook) if kind == "code"), namespace)
    return namespace


def _run(notebook: str, statements: str, cell: str, values: dict) -> bool:
    """Run `statements` and then the cell's check call (its last statement); the check's verdict."""
    namespace = {**_imports(notebook), **values}
    exec(statements, namespace)
    check = ast.parse(cell).body[-1]
    assert isinstance(check, ast.Expr), f"the last statement of the exercise cell is not the check:\n{cell}"
    return eval(compile(ast.Expression(check.value), "<check>", "eval"), namespace)


def _placeholder(cell: str) -> str:
    """The cell's statements a learner replaces: the `answer...` assignment, or the function to write."""
    body = [
        node
        for node in ast.parse(cell).body
        if isinstance(node, ast.FunctionDef)
        or (
            isinstance(node, ast.Assign)
            and any(getattr(t, "id", "").startswith("answer") for t in node.targets)
        )
    ]
    assert body, f"no placeholder answer in the exercise cell:\n{cell}"
    return ast.unparse(ast.Module(body=body, type_ignores=[]))


# ------------------------------------------------------------------ stand-ins for the notebooks' earlier values


@functools.cache
def _tiny_with_outlier_layer() -> tuple[dict, int]:
    """Activation statistics of a 4-layer tiny Llama whose layer 2 gets one down_proj input channel 100× larger
    (its up_proj row 5 scaled): notebook 03's `stats`, and that layer's number."""
    model = tiny_llama(seed=0, num_hidden_layers=4)
    with torch.no_grad():
        model.model.layers[2].mlp.up_proj.weight[5] *= 100
    windows = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    linears = named_linears(model)
    return activation_stats(model, windows), sum(m.weight.numel() for m in linears.values())


def _nb03() -> dict:
    stats, n_linear = _tiny_with_outlier_layer()
    act_rows = [  # as notebook 03 builds it for its heatmap
        dict(layer=int(k.split(".")[1]), name=k.split(".", 2)[2], ratio=outlier_ratio(s.mean_abs))
        for k, s in stats.items()
    ]
    return dict(stats=stats, act_rows=act_rows, n_linear=n_linear)


def _toy(correlated: bool = True) -> dict:
    """Notebook 05's two-weight toy; uncorrelated inputs make round-to-nearest the best choice instead."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2000, generator=g, dtype=torch.float64)
    noise = 0.5 * torch.randn(2000, generator=g, dtype=torch.float64)
    X_toy = torch.stack([z + noise, z] if correlated else [noise * 2, z], dim=1)  # (tokens, 2)
    return dict(w_toy=torch.tensor([0.8, 0.6], dtype=torch.float64), X_toy=X_toy)


def _toy_hessian() -> dict:
    """Exercise 2's cell first builds H_toy = 2 X_toy^T X_toy / n (2, 2), as here."""
    toy = _toy()
    return {**toy, "H_toy": 2 * toy["X_toy"].T @ toy["X_toy"] / len(toy["X_toy"])}


@functools.cache
def _awq_layer() -> tuple[torch.Tensor, torch.Tensor]:
    """X (64 tokens, 2048 inputs) with 20 channels of large activations (1%), W (16, 2048) with large weights
    elsewhere: notebook 06's layer in small."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 2048, generator=g)
    X[:, torch.randperm(2048, generator=g)[:20]] *= 30
    W = torch.randn(16, 2048, generator=g)
    W[:, :20] *= 10
    return X, W


def _nb06_single() -> dict:
    X, W = _awq_layer()
    return dict(single=awq_linear(W, X, QuantSpec(bits=4, symmetric=False, group_size=128)))


RTN_TABLE = [  # notebook 04's `results`, with the reference perplexity 20.0
    dict(label="INT8 sym per-channel", ppl=20.1, linear_mb=100.5),
    dict(label="INT4 sym g128", ppl=21.5, linear_mb=51.7),
    dict(label="INT4 sym per-channel", ppl=40.0, linear_mb=50.4),
    dict(label="INT3 sym g32", ppl=35.0, linear_mb=41.2),
]
BYTES = {  # notebook 07's `bytes_per_token`
    "FP16": {"decoder linears": 200e6, "lm_head (tied embedding)": 335e6},
    "INT4": {"decoder linears": 53e6, "lm_head (tied embedding)": 335e6},
}

# "NN-k" -> the values the exercise's cell reads, as one or more cases; the placeholder must fail the first
INPUTS = {
    "02-3": lambda: [dict(W=torch.randn(64, 256, generator=torch.Generator().manual_seed(0)) * 0.02)],
    "03-1": lambda: [_nb03()],
    "03-2": lambda: [_nb03()],
    "04-1": lambda: [dict(results=RTN_TABLE, ref_ppl=20.0), dict(results=RTN_TABLE, ref_ppl=10.0)],
    "05-1": lambda: [_toy(), _toy(correlated=False)],
    "05-2": lambda: [_toy_hessian()],
    "05-3": lambda: [
        {"ppl": {"RTN": 40.0, "GPTQ britannica": 30.0, "GPTQ pydoc": 45.0}},
        {"ppl": {"RTN": 50.0, "GPTQ britannica": 30.0, "GPTQ pydoc": 45.0}},
    ],
    "06-1": lambda: [dict(zip("XW", _awq_layer()))],
    "06-2": lambda: [
        dict(w=torch.tensor([0.5, -0.2, 1.0, 3.0, -0.9]), s=torch.tensor([2.0, 0.5, 1.0, 4.0, 0.25]))
    ],
    "06-3": lambda: [_nb06_single()],
    "07-2": lambda: [dict(bytes_per_token=BYTES)],
    "07-3": lambda: [dict(bytes_per_token=BYTES)],
    "10-2": lambda: [dict(m={"n_tokens": 1024, "top1": 0.8125})],
    "10-3": lambda: [dict(change=-0.10, half=0.06), dict(change=-0.03, half=0.06)],
}

EXERCISES = [(nb, k) for nb in NOTEBOOKS for k in range(1, len(_check_cells(nb)) + 1)]


# ----------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("notebook", list(NOTEBOOKS))
def test_every_exercise_has_a_solution(notebook):
    numbers = _exercise_numbers(notebook)
    assert numbers == list(range(1, len(numbers) + 1)), f"exercise headings out of order: {numbers}"
    assert len(_check_cells(notebook)) == len(numbers), "each exercise needs its own cell calling a check"
    assert [s.number for s in SOLUTIONS if s.notebook == notebook] == numbers


def test_solutions_are_for_notebooks_that_exist():
    assert {s.notebook for s in SOLUTIONS} <= set(NOTEBOOKS)
    assert len({(s.notebook, s.number) for s in SOLUTIONS}) == len(SOLUTIONS)


@pytest.mark.parametrize("notebook, number", EXERCISES, ids=[f"{nb}-{k}" for nb, k in EXERCISES])
def test_solution_passes_its_check_and_the_placeholder_fails(notebook, number, capsys):
    cell = _check_cells(notebook)[number - 1]
    cases = INPUTS.get(f"{notebook}-{number}", lambda: [{}])()
    for values in cases:
        assert _run(notebook, solution(notebook, number).code, cell, values) is True
        assert "✅" in capsys.readouterr().out
    assert _run(notebook, _placeholder(cell), cell, cases[0]) is False
    assert "❌" in capsys.readouterr().out


def test_planted_outlier_layer_is_the_answer():
    """Notebook 03's stand-in means something: its solution finds the layer whose input was made an outlier."""
    namespace = _nb03()
    exec(solution("03", 1).code, namespace)
    assert namespace["answer"] == 2


@pytest.mark.parametrize("notebook", ["05", "5", 5, " 05 "])
def test_lookup_accepts_two_digits_one_digit_or_a_number(notebook):
    found = solution(notebook, 2)
    assert (found.notebook, found.number) == ("05", 2)
    assert "torch.linalg.inv(H_toy)" in found.code
    assert found.code in repr(found) and found.why in found._repr_markdown_()


@pytest.mark.parametrize(
    "notebook, number, listed",
    [("12", 1, "notebook 11: 1"), ("gptq", 1, "notebook 01: 1, 2, 3, 4, 5"), ("05", 4, "1, 2, 3"),
     (8, 2, "exercises are 1"), ("05", "2", "1, 2, 3"), ("05", True, "1, 2, 3")],
    ids=["no-notebook-12", "not-a-number", "no-exercise-4", "one-exercise", "number-as-text", "bool"],
)  # fmt: skip
def test_unknown_exercise_lists_what_exists(notebook, number, listed):
    with pytest.raises(ValueError, match=listed):
        solution(notebook, number)
