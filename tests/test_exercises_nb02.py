import torch

from qviz.exercises import nb02


def absmax_right(w, bits):
    scale = w.abs().max() / (2 ** (bits - 1) - 1)
    return torch.round(w / scale), scale


def absmax_floor(w, bits):
    scale = w.abs().max() / (2 ** (bits - 1) - 1)
    return torch.floor(w / scale), scale


def absmax_wrong_scale(w, bits):
    scale = w.abs().max() / 2 ** (bits - 1)
    return torch.round(w / scale), scale


def zero_point_right(w, bits):
    lo, hi = min(w.min().item(), 0.0), max(w.max().item(), 0.0)
    scale = (hi - lo) / (2**bits - 1)
    zero_point = round(-lo / scale)
    return torch.clamp(torch.round(w / scale) + zero_point, 0, 2**bits - 1), scale, zero_point


def zero_point_no_widening(w, bits):
    lo, hi = w.min().item(), w.max().item()
    scale = (hi - lo) / (2**bits - 1)
    zero_point = round(-lo / scale)
    return torch.clamp(torch.round(w / scale) + zero_point, 0, 2**bits - 1), scale, zero_point


def raises(w, bits):
    raise NotImplementedError("your turn")


def test_absmax_check(capsys):
    assert nb02.check_absmax(absmax_right)
    assert not nb02.check_absmax(absmax_floor)
    assert "round half to even" in capsys.readouterr().out
    assert not nb02.check_absmax(absmax_wrong_scale)
    assert "the scale should be" in capsys.readouterr().out
    assert not nb02.check_absmax(raises)
    assert "NotImplementedError" in capsys.readouterr().out


def test_zero_point_check(capsys):
    assert nb02.check_zero_point(zero_point_right)
    assert not nb02.check_zero_point(zero_point_no_widening)
    assert "widened to include 0" in capsys.readouterr().out
    assert not nb02.check_zero_point(raises)


def test_bits_and_storage_checks(capsys):
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    # exactly one bit width is "the fewest that reach 30 dB"; a smaller answer is told to go up
    answers = [b for b in range(2, 12) if nb02.check_bits_for_sqnr(w, b)]
    assert len(answers) == 1
    assert "try more bits" in capsys.readouterr().out
    assert nb02.check_group_storage(4 + 20 / 64)
    assert not nb02.check_group_storage(4.25)
