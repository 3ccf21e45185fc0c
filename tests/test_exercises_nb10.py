from qviz.exercises import nb10


def test_ste_gradient(capsys):
    assert nb10.check_ste_gradient([1, 1, 0])
    assert "clipped" in capsys.readouterr().out
    for answer, hint in [([0, 0, 0], "true gradient"), ([1, 1, 1], "clamp"), ([1, 0, 0], "not clipped"),
                         ([0, 1, 0], "inside the codes"), ("110", "list of three")]:  # fmt: skip
        assert not nb10.check_ste_gradient(answer)
        assert hint in capsys.readouterr().out


def test_flips(capsys):
    assert nb10.check_flips(100, n_tokens=1000, top1=0.9)
    capsys.readouterr()
    for answer, hint in [(900, "kept their top-1"), (0.1, "fraction"), (50, "multiply"), (None, "a number")]:
        assert not nb10.check_flips(answer, n_tokens=1000, top1=0.9)
        assert hint in capsys.readouterr().out


def test_significant(capsys):
    assert nb10.check_significant(True, change=-0.10, half=0.06)
    assert nb10.check_significant(False, change=-0.03, half=0.06)
    capsys.readouterr()
    assert not nb10.check_significant(False, change=-0.10, half=0.06)
    assert "more than noise" in capsys.readouterr().out
    assert not nb10.check_significant(True, change=-0.03, half=0.06)
    assert "could be noise" in capsys.readouterr().out
    assert not nb10.check_significant("yes", change=-0.03, half=0.06)
    assert "True or False" in capsys.readouterr().out
