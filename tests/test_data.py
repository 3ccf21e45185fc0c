"""qviz.data: offline texts, and evaluation/calibration windows that never share a token position."""

import pytest
import torch

from qviz import data


class CharTokenizer:
    """One token per character (ids = byte values): a tokenizer whose output a test can predict."""

    name_or_path = "char-test"

    def __len__(self):
        return 256

    def __call__(self, text, add_special_tokens=False, verbose=True):
        return {"input_ids": list(text.encode("utf-8"))}


@pytest.mark.parametrize("name", ["britannica", "shakespeare", "pydoc"])
def test_offline_texts_are_real_english(name):
    text = data.load_text(name)
    assert len(text) > 100_000
    words = text.lower().split()
    assert words.count("the") > 500  # English prose or documentation, not binary or markup


def test_britannica_drops_scan_markup_and_starts_with_the_article():
    text = data.load_text("britannica")
    assert text.startswith("Shakespeare, William (1564--1616)")
    assert "### START" not in text and "\np.772:0\n" not in text
    assert "BIBLIOGRAPHY" not in text and text.count("8vo") < 20  # the OCR book list at the end is cut
    assert text.endswith("(M. H. S.)")


def test_unknown_text_lists_the_choices():
    with pytest.raises(ValueError, match="britannica"):
        data.load_text("c4")


def test_wikitext_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="offline texts"):
        data.load_text("wikitext2")


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 17, 1234])
@pytest.mark.parametrize("n_tokens,seqlen", [(100, 10), (88_000, 2048), (1001, 500)])
def test_calibration_and_evaluation_never_share_a_position(seed, n_tokens, seqlen):
    n_eval = data.split_point(n_tokens) // seqlen
    eval_pos = set()
    for s in data.eval_window_starts(n_tokens, seqlen, n_eval):
        window = set(range(s, s + seqlen))
        assert not window & eval_pos  # evaluation windows do not overlap each other either
        eval_pos |= window
    calib_pos = set()
    for s in data.calib_window_starts(n_tokens, seqlen, 64, seed):
        assert s + seqlen <= n_tokens
        calib_pos |= set(range(s, s + seqlen))
    assert not eval_pos & calib_pos
    assert max(eval_pos) < data.split_point(n_tokens) <= min(calib_pos)


def test_calibration_sampling_is_seeded():
    a = data.calib_window_starts(10_000, 128, 8, seed=5)
    assert a == data.calib_window_starts(10_000, 128, 8, seed=5)
    assert a != data.calib_window_starts(10_000, 128, 8, seed=6)


def test_windows_are_slices_of_the_token_stream():
    tok = CharTokenizer()
    ids = data.token_stream(tok, "britannica")
    assert ids.dtype == torch.long and len(ids) == len(data.load_text("britannica").encode("utf-8"))
    ev = data.eval_windows(tok, "britannica", seqlen=64, n=3)
    assert ev.shape == (3, 64)
    assert torch.equal(ev.flatten(), ids[:192])  # consecutive, from the start of the evaluation region
    assert bytes(ev[0].tolist()).decode().startswith("Shakespeare, William")
    cal = data.calib_windows(tok, "britannica", seqlen=64, n=5, seed=3)
    for row, s in zip(cal, data.calib_window_starts(len(ids), 64, 5, seed=3)):
        assert torch.equal(row, ids[s : s + 64])
    assert torch.equal(data.eval_tokens(tok, "britannica", n_tokens=100), ids[:100])


def test_too_few_tokens_is_a_clear_error():
    with pytest.raises(ValueError, match="at most 5 windows"):
        data.eval_window_starts(100, 10, 6)
    with pytest.raises(ValueError, match="fewer than one window"):
        data.calib_window_starts(100, 60, 1)
    with pytest.raises(ValueError, match="seqlen"):
        data.eval_window_starts(100, 1, 1)


def test_empty_text_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(data._LOADERS, "pydoc", lambda: "  \n")
    with pytest.raises(ValueError, match="empty"):
        data.load_text("pydoc")
