import math

from qviz.exercises import nb04

RESULTS = [
    dict(label="INT8 sym per-channel", ppl=20.2, linear_mb=100.5),
    dict(label="INT4 sym g128", ppl=21.5, linear_mb=51.7),
    dict(label="INT4 sym per-channel", ppl=40.0, linear_mb=50.4),
]


def test_smallest_within(capsys):
    assert nb04.check_smallest_within(RESULTS, 20.0, "INT4 sym g128", tolerance=0.10)
    assert not nb04.check_smallest_within(RESULTS, 20.0, "INT8 sym per-channel", tolerance=0.10)
    assert "a smaller setting does too" in capsys.readouterr().out
    assert not nb04.check_smallest_within(RESULTS, 20.0, "INT4 sym per-channel", tolerance=0.10)
    assert "more than 10%" in capsys.readouterr().out
    assert not nb04.check_smallest_within(RESULTS, 20.0, "INT2", tolerance=0.10)
    assert "one of the labels" in capsys.readouterr().out
    # with a tight tolerance nothing qualifies, and None is the right answer
    assert nb04.check_smallest_within(RESULTS, 20.0, None, tolerance=0.001)


def test_ppl_factor(capsys):
    assert nb04.check_ppl_factor(math.exp(0.05))
    assert nb04.check_ppl_factor(1.0513)
    assert nb04.check_ppl_factor(1.05)  # the first-order answer 1 + Δ is reasonable: accepted, and explained
    assert "first-order" in capsys.readouterr().out
    assert not nb04.check_ppl_factor(1.10)  # the notebook's example number
    assert not nb04.check_ppl_factor(0.05)
    assert "change of the NLL itself" in capsys.readouterr().out
    assert not nb04.check_ppl_factor(0.95)
    assert not nb04.check_ppl_factor("1.05")
