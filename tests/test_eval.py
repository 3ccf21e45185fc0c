"""qviz.eval against independent direct computations on a tiny random Llama."""

import math

import pytest
import tiny_models
import torch
import torch.nn.functional as F

from qviz.eval import (
    evaluate,
    flips,
    generate,
    kl_tail,
    model_size,
    nll,
    paired_difference,
    perplexity,
    token_view,
)
from qviz.quant import QuantSpec, bits_per_weight

VOCAB = 50


def tiny_llama(seed=0):
    return tiny_models.tiny_llama(
        seed,
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
    )


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


@pytest.fixture(scope="module")
def windows():
    return torch.randint(3, VOCAB, (3, 24), generator=torch.Generator().manual_seed(1))


def direct_nll(model, rows):
    """Σ −log p(x_t | x_<t) over t >= 1 of every row, each row one forward pass."""
    with torch.no_grad():
        logp = F.log_softmax(model(rows).logits.double(), dim=-1)
    return -logp[:, :-1].gather(-1, rows[:, 1:, None]).sum().item(), rows[:, 1:].numel()


def test_perplexity_equals_direct_computation(model, windows):
    total, count = direct_nll(model, windows)
    assert perplexity(model, windows, bos_token_id=None, progress=False) == pytest.approx(
        math.exp(total / count), rel=1e-5
    )


def test_stride_equal_seqlen_is_plain_non_overlapping_chunks(model, windows):
    chunks = windows.reshape(-1, 8)  # each row of 24 read as three independent chunks of 8
    total, count = direct_nll(model, chunks)
    got_total, got_count = nll(model, windows, seqlen=8, stride=8, bos_token_id=None, progress=False)
    assert got_count == count == 3 * 3 * 7
    assert got_total == pytest.approx(total, rel=1e-5)


def test_stride_one_scores_each_token_once_with_full_context(model, windows):
    seqlen = 6
    expected = 0.0
    for (
        row
    ) in windows:  # token t is predicted from exactly the seqlen - 1 tokens before it (or all, early on)
        for t in range(1, len(row)):
            ctx = row[max(0, t - seqlen + 1) : t + 1][None]
            with torch.no_grad():
                logp = F.log_softmax(model(ctx).logits[0, -2].double(), dim=-1)
            expected -= logp[row[t]].item()
    total, count = nll(model, windows, seqlen=seqlen, stride=1, bos_token_id=None, progress=False)
    assert count == windows.shape[0] * (windows.shape[1] - 1)
    assert total == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("stride", [1, 3, 5, 7])
def test_overlapping_strides_count_every_token_once(model, windows, stride):
    _, count = nll(model, windows, seqlen=8, stride=stride, bos_token_id=None, progress=False)
    assert count == windows.shape[0] * (windows.shape[1] - 1)
    _, count = nll(model, windows, seqlen=8, stride=stride, bos_token_id=1, progress=False)
    assert count == windows.numel()  # with BOS the first token is scored too


def test_bos_is_context_not_target(model, windows):
    with_bos = torch.cat([torch.ones(len(windows), 1, dtype=torch.long), windows], dim=1)
    total, count = direct_nll(model, with_bos)
    assert nll(model, windows, bos_token_id=1, progress=False) == pytest.approx((total, count), rel=1e-5)
    assert nll(model, windows, progress=False) == pytest.approx((total, count), rel=1e-5)  # "auto": config's


def test_bad_stride_is_a_clear_error(model, windows):
    with pytest.raises(ValueError, match="stride"):
        perplexity(model, windows, seqlen=8, stride=9, bos_token_id=None, progress=False)
    with pytest.raises(ValueError, match="windows"):
        perplexity(model, torch.zeros(0, dtype=torch.long), progress=False)


def test_kl_with_itself_is_zero_and_top1_is_one(model, windows):
    result = evaluate(model, windows, model, progress=False)
    assert result.kl == pytest.approx(0.0, abs=1e-6) and result.kl_p999 == pytest.approx(0.0, abs=1e-6)
    assert result.top1 == 1.0 and result.ppl == result.ref_ppl
    assert result.n_tokens == windows.numel()  # every token of every window, predicted after BOS


@pytest.mark.parametrize("bos", [1, None], ids=["bos", "no-bos"])
def test_evaluate_equals_direct_computation(model, windows, bos):
    """One pass gives what three independent computations give: perplexity (as `perplexity`), the per-token
    KL's mean and quantiles, and top-1 agreement, on the same scored tokens."""
    other = tiny_llama(seed=1)
    ids = windows if bos is None else torch.cat([torch.full((3, 1), bos), windows], 1)
    with torch.no_grad():
        log_p = F.log_softmax(model(ids).logits.double(), -1)[:, :-1]
        log_q = F.log_softmax(other(ids).logits.double(), -1)[:, :-1]
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).flatten()
    top1 = (log_p.argmax(-1) == log_q.argmax(-1)).double().mean().item()
    result = evaluate(other, windows, model, bos_token_id=bos, progress=False)
    assert result.n_tokens == kl.numel() == (windows.numel() if bos else windows[:, 1:].numel())
    assert result.kl == pytest.approx(kl.mean().item(), rel=1e-4) and result.kl > 0
    assert result.kl_p99 == pytest.approx(torch.quantile(kl, 0.99).item(), rel=1e-3)
    assert result.kl_p999 == pytest.approx(torch.quantile(kl, 0.999).item(), rel=1e-3)
    assert result.kl_p999 >= result.kl_p99 > result.kl
    assert result.top1 == pytest.approx(top1)
    assert result.ppl == pytest.approx(perplexity(other, windows, bos_token_id=bos, progress=False), rel=1e-5)
    assert result.ref_ppl == pytest.approx(
        perplexity(model, windows, bos_token_id=bos, progress=False), rel=1e-5
    )
    alone = evaluate(other, windows, bos_token_id=bos, progress=False)
    assert alone.ppl == result.ppl and alone.kl is None and alone.top1 is None


def test_evaluate_refuses_models_with_different_bos(model, windows):
    other = tiny_llama(seed=1)
    other.config.bos_token_id = 0
    with pytest.raises(ValueError, match="different BOS"):
        evaluate(other, windows, model, progress=False)


def test_model_size_float_and_quantized(model):
    shapes = [(32, 32), (16, 32), (16, 32), (32, 32), (64, 32), (64, 32), (32, 64)]  # q k v o gate up down
    n_linear = 2 * sum(o * i for o, i in shapes)
    size = model_size(model)
    assert size.linear_params == n_linear
    assert size.linear_bytes == 4 * n_linear and size.bits_per_weight == 32
    n_all = sum(p.numel() for p in model.parameters())
    assert size.linear_params + size.other_params == n_all
    assert size.total_bytes == 4 * n_all
    spec = QuantSpec(bits=4, symmetric=False, group_size=16)
    q = model_size(model, spec)
    assert q.linear_bytes == pytest.approx(
        2 * sum(bits_per_weight(spec, s) * s[0] * s[1] / 8 for s in shapes)
    )
    assert q.other_bytes == size.other_bytes
    assert q.bits_per_weight == pytest.approx(4 + (16 + 4) / 16)  # codes + fp16 scale + 4-bit zero per 16


@pytest.mark.slow
def test_real_model_perplexity_and_greedy_text(smollm2):
    from qviz.data import eval_windows

    model, tok = smollm2
    ppl = perplexity(model, eval_windows(tok, "britannica", seqlen=256, n=1), progress=False)
    assert 10 < ppl < 40  # SmolLM2-135M on 1911 Britannica prose: about 20-23
    text = generate(model, tok, "The capital of France is", max_new_tokens=8)
    assert text == generate(model, tok, "The capital of France is", max_new_tokens=8)  # greedy: deterministic
    assert "Paris" in text


def test_paired_difference_is_batch_means():
    g = torch.Generator().manual_seed(0)
    a, b = (
        torch.rand(640, generator=g, dtype=torch.float64),
        torch.rand(640, generator=g, dtype=torch.float64),
    )
    mean, se = paired_difference(a.tolist(), b.tolist(), block=64)
    blocks = (a - b).reshape(10, 64).mean(1)  # 10 block means, by hand
    assert mean == pytest.approx((a - b).mean().item())
    assert se == pytest.approx(math.sqrt(((blocks - blocks.mean()) ** 2).sum().item() / 9 / 10))
    with pytest.raises(ValueError, match="at least 128 tokens"):
        paired_difference([1.0] * 100, [0.0] * 100)
    with pytest.raises(ValueError, match=r"equal-length .* got \(640,\) and \(1,\)"):  # broadcast before
        paired_difference(a.tolist(), [0.0])


def test_evaluation_keeps_every_token(model, windows):
    other = tiny_llama(seed=1)
    result = evaluate(other, windows, model, progress=False)
    assert len(result.token_nll) == len(result.token_kl) == result.n_tokens
    assert math.exp(sum(result.token_nll) / result.n_tokens) == pytest.approx(result.ppl)
    assert sum(result.token_kl) / result.n_tokens == pytest.approx(result.kl)


def test_token_kl_equals_the_textbook_sum_in_float64():
    """The fused KL (from the logit difference, log1p/expm1) against Σ p (log p − log q) in float64, on logits
    that are close (KL ~ 1e-4, where float32 textbook arithmetic loses digits), far apart, and shifted by a
    constant (the same distribution: KL 0)."""
    from qviz.eval import _token_stats

    g = torch.Generator().manual_seed(0)
    z_ref = 4 * torch.randn(300, 5000, generator=g)
    targets = torch.randint(0, 5000, (300,), generator=g)
    for z in (
        z_ref + 0.02 * torch.randn(300, 5000, generator=g),
        z_ref + torch.randn(300, 5000, generator=g),
        z_ref + 7.0,
    ):
        s = _token_stats(z_ref, z, targets, chunk=64)
        log_p, log_q = F.log_softmax(z_ref.double(), -1), F.log_softmax(z.double(), -1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
        torch.testing.assert_close(s["kl"].double(), kl, rtol=1e-3, atol=1e-7)
        torch.testing.assert_close(
            s["nll"].double(), -log_q.gather(-1, targets[:, None])[:, 0], rtol=1e-5, atol=1e-5
        )
        torch.testing.assert_close(
            s["ref_nll"].double(), -log_p.gather(-1, targets[:, None])[:, 0], rtol=1e-5, atol=1e-5
        )
        assert torch.equal(s["agree"], log_p.argmax(-1) == log_q.argmax(-1))


def test_reference_logits_give_the_same_evaluation_once(model, windows, monkeypatch):
    from qviz.eval import ReferenceLogits

    other, third = tiny_llama(seed=1), tiny_llama(seed=2)
    ref = ReferenceLogits(model, windows)
    calls = []
    forward = type(model).forward
    monkeypatch.setattr(
        type(model), "forward", lambda self, *a, **k: calls.append(self) or forward(self, *a, **k)
    )
    for m in (other, third):
        assert evaluate(m, windows, ref, progress=False) == evaluate(m, windows, model, progress=False)
    assert sum(c is model for c in calls) == 3 + 2 * 3  # once per window through the cache, + the two direct
    with pytest.raises(ValueError, match="other windows"):
        evaluate(other, windows[:2], ref, progress=False)


def test_the_reference_changed_in_place_is_measured_not_looked_up(windows):
    """A reference modified in place (here: activation quantization hooks) is the same object as the one whose
    logits were stored: evaluate must run it, not return the stored logits (KL 0, a silent wrong number)."""
    from qviz.act import ActSpec, quantize_activations
    from qviz.eval import ReferenceLogits

    model = tiny_llama()
    ref = ReferenceLogits(model, windows)
    assert evaluate(model, windows, ref, progress=False).kl == 0
    with quantize_activations(model, ActSpec("int4", "per-tensor")):
        changed = evaluate(model, windows, ref, progress=False)
    assert changed.kl > 1e-6 and changed.ppl != changed.ref_ppl  # a random tiny model: small, but not 0


def test_reference_logits_evaluation_is_the_plain_perplexity(model, windows):
    from qviz.eval import ReferenceLogits

    own, plain = ReferenceLogits(model, windows).evaluation(), evaluate(model, windows, progress=False)
    assert own.n_tokens == plain.n_tokens and own.token_nll == pytest.approx(plain.token_nll, rel=1e-6)
    total, count = direct_nll(model, torch.cat([torch.ones_like(windows[:, :1]), windows], 1))  # BOS = 1
    assert own.n_tokens == count and own.ppl == pytest.approx(math.exp(total / count), rel=1e-5)


def _word_tokenizer(n_words):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(WordLevel({f"w{i}": i for i in range(n_words)}, unk_token="w0"))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="w0", eos_token="w2")


def test_generate_checks_its_prompt_against_the_model(model):
    tok = _word_tokenizer(VOCAB)
    assert isinstance(generate(model, tok, "w5 w6", max_new_tokens=3), str)
    with pytest.raises(ValueError, match="prompt must be a non-empty string"):
        generate(model, tok, "")
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 1, got 2.5"):
        generate(model, tok, "w5", max_new_tokens=2.5)
    with pytest.raises(ValueError, match=r"the prompt's tokens: token ids from 60 to 70, but .* has 50 ids"):
        generate(model, _word_tokenizer(100), "w60 w70")  # another model's tokenizer
    with pytest.raises(
        ValueError, match=r"the prompt's 2 tokens \+ max_new_tokens=300 .* at most 254 new tokens"
    ):
        generate(model, tok, "w5 w6", max_new_tokens=300)


def test_evaluate_needs_models_of_one_vocabulary(model, windows):
    other = tiny_models.tiny_llama(
        0, vocab_size=VOCAB + 14, hidden_size=32, intermediate_size=64, bos_token_id=1
    )
    with pytest.raises(ValueError, match="the model predicts 64 tokens, the reference 50"):
        evaluate(other, windows, model, progress=False)


def test_nothing_to_score_and_a_bos_outside_the_vocabulary(model, windows):
    """A single token without BOS has no context: perplexity divided by zero and evaluate returned NaN."""
    for f in (perplexity, evaluate):
        with pytest.raises(ValueError, match="windows of one token and no BOS leave nothing to score"):
            f(model, windows[:, :1], bos_token_id=None, progress=False)
        with pytest.raises(ValueError, match=r"bos_token_id: token ids from 99 to 99, .* has 50 ids"):
            f(model, windows, bos_token_id=99, progress=False)
    with pytest.raises(ValueError, match="seqlen must be an integer or None, got 8.0"):
        nll(model, windows, seqlen=8.0, progress=False)


def test_the_kl_tail_and_flips_equal_a_direct_numpy_computation(model, windows):
    import numpy as np

    ev = evaluate(model, windows, tiny_llama(seed=3), progress=False)
    tail = kl_tail(ev.token_kl)
    kl = np.array(ev.token_kl)
    for key, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)):
        assert tail[key] == pytest.approx(np.quantile(kl, q), rel=1e-12)
    assert tail["p99"] == pytest.approx(ev.kl_p99)
    # flips: the tokens whose top-1 prediction changed, counted directly from both models' logits
    ids = torch.cat(
        [torch.ones(len(windows), 1, dtype=torch.long), windows], 1
    )  # BOS = 1, as evaluate adds it
    with torch.no_grad():
        a, b = model(ids).logits[:, :-1].argmax(-1), tiny_llama(seed=3)(ids).logits[:, :-1].argmax(-1)
    assert flips(ev) == flips(ev.as_dict()) == int((a != b).sum())
    with pytest.raises(ValueError, match="quantiles in"):
        kl_tail(ev.token_kl, (0.5, 1.0))
    with pytest.raises(ValueError, match="against a reference"):
        flips(evaluate(model, windows, progress=False))


class _Digits:
    """A tokenizer of digits: "3 14" -> [3, 1, 4] (spaces dropped), for the tiny model's vocabulary."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + int(c) for c in text if c.isdigit()]}

    def decode(self, ids):
        return "".join(str(int(i) - 3) if int(i) >= 3 else "?" for i in ids)


def test_token_view_agrees_with_evaluate_token_by_token(model):
    other = tiny_llama(seed=3)
    view = token_view(other, model, _Digits(), "31415926535")
    ids = torch.tensor([[3 + int(c) for c in "31415926535"]])
    ev = evaluate(other, ids, model, progress=False)
    assert view.tokens == list("31415926535")  # BOS first: every token of the text is scored
    assert view.kl == pytest.approx(ev.token_kl, abs=1e-6)
    assert [-x for x in view.logp] == pytest.approx(ev.token_nll, abs=1e-5)
    assert view.delta == pytest.approx([a - b for a, b in zip(view.logp, view.logp_ref)])
    assert sum(view.flipped) == flips(ev)
    with pytest.raises(ValueError, match="non-empty string"):
        token_view(other, model, _Digits(), "  ")
