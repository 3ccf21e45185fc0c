from qviz.exercises import nb09


def test_q4_k_bits_right_answer(capsys):
    assert nb09.check_q4_k_bits(4.5)
    assert "144 bytes" in capsys.readouterr().out


def test_q4_k_bits_names_the_mistake(capsys):
    for answer, hint in [(4.0, "codes only"), (4.375, "add d and dmin"), (4.125, "12 more bytes"),
                         (5.125, "16-bit floats"), (4.7, "add up the block's bytes"), ("4.5", "a number")]:  # fmt: skip
        assert not nb09.check_q4_k_bits(answer)
        assert hint in capsys.readouterr().out


def test_mxfp4_scale(capsys):
    assert nb09.check_mxfp4_scale(1.0)  # floor(log2 5) - 2 = 0
    assert nb09.check_mxfp4_scale(0.125, amax=0.9)  # floor(log2 0.9) = -1 -> 2^-3
    capsys.readouterr()
    for answer, hint in [
        (5 / 6, "NVFP4's idea"),
        (2.0, "not this one"),
        (0.3, "powers of two"),
        (None, "a number"),
    ]:
        assert not nb09.check_mxfp4_scale(answer)
        assert hint in capsys.readouterr().out
