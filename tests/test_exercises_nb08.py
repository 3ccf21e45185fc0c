from qviz.exercises import nb08


def test_kv_cache_gib_right_answer_and_its_units(capsys):
    assert nb08.check_kv_cache_gib(4.0)  # 131,072 bytes per token × 32,768 tokens = 4 GiB exactly
    assert nb08.check_kv_cache_gib(4.295)  # the same in GB is accepted, and said
    assert "GB (10^9 bytes)" in capsys.readouterr().out


def test_kv_cache_gib_names_the_mistake(capsys):
    for answer, hint in [(2.0, "a key AND a value"), (16.0, "32 query heads"), (32.0, "bits, not bytes"),
                         (1.0, "a quarter"), (7.0, "multiply 2"), ("4", "a number of GiB")]:  # fmt: skip
        assert not nb08.check_kv_cache_gib(answer)
        assert hint in capsys.readouterr().out


def test_kv_cache_gib_other_model():
    # SmolLM2-135M: 30 layers, 3 KV heads, head_dim 64 -> 23,040 bytes per token; 8,192 tokens = 0.17578125 GiB
    assert nb08.check_kv_cache_gib(0.1758, layers=30, kv_heads=3, head_dim=64, tokens=8192)
