"""Exercise checks of notebook 07: right answers pass, wrong ones fail with a message that points the way."""

import pytest

from qviz.exercises import nb07

BYTES = {
    "FP16": {"decoder linears": 200e6, "lm_head": 335e6},
    "INT4": {"decoder linears": 53e6, "lm_head": 335e6},
}


def test_int32_words(capsys):
    assert nb07.check_int32_words(2_097_152)  # 4096 * 4096 / 8
    assert nb07.check_int32_words(4096 * 14336 * 3 // 32, 4096, 14336, bits=3)
    assert "MiB" in capsys.readouterr().out


@pytest.mark.parametrize(
    "answer, hint",
    [
        (4096 * 4096, "one word per weight"),
        (4096 * 4096 // 2, "number of bytes"),
        (4096 * 4096 * 4, "number of bits"),
        (4096 * 4096 // 4, "32 / bits codes"),
        (12345, "how many fit"),
        ("many", "answer with a number"),
    ],
    ids=["words=weights", "bytes", "bits", "bits-per-word", "other", "not-a-number"],
)
def test_int32_words_wrong(answer, hint, capsys):
    assert not nb07.check_int32_words(answer)
    assert hint in capsys.readouterr().out


def test_tokens_per_second(capsys):
    assert nb07.check_tokens_per_second(250.0, bytes_per_token=400e6, bandwidth_gbps=100)
    assert nb07.check_tokens_per_second(252.0, bytes_per_token=400e6, bandwidth_gbps=100)  # within 2%
    assert "ms per token" in capsys.readouterr().out


@pytest.mark.parametrize(
    "answer, hint",
    [
        (0.004, "time per token"),
        (4.0, "time per token"),  # milliseconds
        (0.25, "units"),
        (250_000, "units"),
        (100.0, "divide the bandwidth"),
        (None, "answer with a number"),
    ],
    ids=["seconds", "milliseconds", "MB-as-bytes", "bytes-as-MB", "other", "none"],
)
def test_tokens_per_second_wrong(answer, hint, capsys):
    assert not nb07.check_tokens_per_second(answer, bytes_per_token=400e6, bandwidth_gbps=100)
    assert hint in capsys.readouterr().out


def test_whole_model_speedup(capsys):
    assert nb07.check_whole_model_speedup(535 / 388, BYTES)
    assert not nb07.check_whole_model_speedup(4.0, BYTES)
    assert "decoder linears alone" in capsys.readouterr().out
    assert not nb07.check_whole_model_speedup(200 / 53, BYTES)
    assert "decoder linears alone" in capsys.readouterr().out
    assert not nb07.check_whole_model_speedup(388 / 535, BYTES)
    assert "upside down" in capsys.readouterr().out
    assert not nb07.check_whole_model_speedup("fast", BYTES)
    assert "ratio" in capsys.readouterr().out
