"""Check functions for the notebooks' exercises, one submodule per notebook (`qviz.exercises.nb02`, ...).

Each check raises nothing and returns nothing on a wrong answer: it prints a helpful message saying what is off,
and returns True only when the answer is right, so a notebook cell never ends in a traceback.

`solution(notebook, number)` reveals an exercise's worked solution (`qviz.exercises.solutions`).
"""

from qviz.exercises.solutions import solution

__all__ = ["solution"]
