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
    with pytest.raises(ValueError, match="need integers seqlen >= 2 and n >= 1 windows, got seqlen=10.5"):
        data.calib_window_starts(100, 10.5, 1)


def test_empty_text_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(data._LOADERS, "pydoc", lambda: "  \n")
    with pytest.raises(ValueError, match="empty"):
        data.load_text("pydoc")


# --- the token cache -----------------------------------------------------------------------------------------


def word_tokenizer(words):
    """A fast tokenizer that maps each word of `words` to its index (unknown words to 0)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token=words[0])


def test_tokenizers_of_one_class_and_size_do_not_share_a_cache_entry(monkeypatch):
    """The issue's example: the key (text, class name, name_or_path, len) let two different tokenizers of the
    same size share one cached token stream."""
    import copy

    monkeypatch.setitem(data._LOADERS, "pydoc", lambda: "the cat sat on the mat")
    monkeypatch.setattr(data, "_TOKEN_CACHE", {})
    a = word_tokenizer(["<unk>", "the", "cat", "sat", "on", "mat"])
    b = word_tokenizer(["<unk>", "mat", "on", "sat", "cat", "the"])  # same size and class, other ids
    assert (type(a), a.name_or_path, len(a)) == (type(b), b.name_or_path, len(b))
    assert data.token_stream(a, "pydoc").tolist() == [1, 2, 3, 4, 1, 5]
    assert data.token_stream(b, "pydoc").tolist() == [5, 4, 3, 2, 5, 1]
    data.token_stream(copy.deepcopy(a), "pydoc")  # a copy tokenizes alike: it shares a's entry
    assert len(data._TOKEN_CACHE) == 2


# --- windows against a model: every function that reads token windows checks them alike -------------------


def _readers():
    from qviz.calib.capture import capture_layer_inputs, linear_inputs
    from qviz.eval import evaluate, nll, perplexity

    return {
        "perplexity": lambda m, w: perplexity(m, w, progress=False),
        "nll": lambda m, w: nll(m, w, progress=False),
        "evaluate": lambda m, w: evaluate(m, w, progress=False),
        "evaluate-reference": lambda m, w: evaluate(_model(), w, m, progress=False),
        "capture_layer_inputs": lambda m, w: capture_layer_inputs(m, w),
        "linear_inputs": lambda m, w: linear_inputs(m, w, 0, "mlp.down_proj"),
    }


def _model():
    from tiny_models import tiny_llama

    return tiny_llama(vocab_size=50, max_position_embeddings=32, bos_token_id=1)


@pytest.mark.parametrize("reader", list(_readers()))
@pytest.mark.parametrize(
    "windows, message",
    [
        (torch.full((2, 8), 3.7), "windows must hold integer token ids, got a torch.float32 tensor"),
        (torch.randint(0, 262_144, (2, 8), generator=torch.Generator().manual_seed(0)),
         r"windows: token ids from \d+ to \d+, but this model's vocabulary has 50 ids \(0 to 49\): were "
         "they made with another model's tokenizer"),
        (torch.full((2, 8), -1), "windows: token ids from -1 to -1"),
        (torch.full((2, 32), 7), r"make the model read 33 tokens at once, more than its 32 positions "
         r"\(config.max_position_embeddings\): (use windows of at most 31 tokens|pass seqlen=32 or less)"),
        ([torch.ones(8, dtype=torch.long), torch.ones(5, dtype=torch.long)], "equal-length 1-D lists"),
    ],
    ids=["float", "other-tokenizer", "negative", "too-long-with-bos", "ragged"],
)  # fmt: skip
def test_every_window_reader_refuses_what_the_model_cannot_read(reader, windows, message):
    """The issue's examples: a float id was truncated by perplexity and refused by capture; ids past the
    vocabulary and windows past the positions surfaced as IndexError: index out of range in self."""
    with pytest.raises(ValueError, match=message):
        _readers()[reader](_model(), windows)


def test_with_bos_prepends_the_models_bos_and_checks_the_windows():
    import tiny_models

    from qviz.data import with_bos

    model = tiny_models.tiny_llama(vocab_size=50, max_position_embeddings=8, bos_token_id=1)
    ids, n_bos = with_bos(model, torch.tensor([[5, 6, 7], [8, 9, 10]]))
    assert n_bos == 1 and ids.tolist() == [[1, 5, 6, 7], [1, 8, 9, 10]]
    ids, n_bos = with_bos(model, torch.tensor([5, 6, 7]), bos_token_id=None)  # a 1-D window, raw
    assert n_bos == 0 and ids.tolist() == [[5, 6, 7]]
    with pytest.raises(ValueError, match="at most 7 tokens"):  # 8 positions, one of them BOS
        with_bos(model, torch.arange(3, 11)[None])
    assert with_bos(model, torch.arange(3, 11)[None], whole=False)[0].shape == (1, 9)  # a chunking reader
    with pytest.raises(ValueError, match="bos_token_id must be an int"):
        with_bos(model, torch.tensor([[5, 6]]), bos_token_id=True)
    with pytest.raises(ValueError, match="bos_token_id"):
        with_bos(model, torch.tensor([[5, 6]]), bos_token_id=50)  # outside the vocabulary
