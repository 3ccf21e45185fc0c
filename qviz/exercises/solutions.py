"""Worked solutions of the notebooks' exercises, revealed on request: `solution("05", 2)` or `solution(5, 2)`.

Each solution is the code a learner types in place of the exercise's placeholder (the `answer = ...  # change me`
line, or the body of the function to write), followed in the notebook by the exercise's own check call, and one
or two sentences of why. The code uses only names the notebook has defined by then (`W`, `results`, `torch`, ...).

The solutions are data, one entry per exercise in notebook order. `tests/test_solutions.py` finds every exercise
in the notebooks, requires a solution for each, and runs each solution through the notebook's own check call.

>>> print(solution(8, 1).code)
answer = 2 * 32 * 8 * 128 * 2 * 32768 / 2**30  # K and V × layers × KV heads × head_dim × 2 bytes × tokens
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

__all__ = ["SOLUTIONS", "Solution", "solution"]


@dataclass(frozen=True, repr=False)
class Solution:
    """One exercise's worked solution. Displays as a code block and its explanation in a notebook."""

    notebook: str  # two digits: "01" .. "11"
    number: int  # the exercise's number inside its notebook, from 1
    code: str  # what replaces the placeholder; the notebook's check call follows it
    why: str  # one or two sentences

    def __repr__(self) -> str:
        return f"Notebook {self.notebook}, exercise {self.number}:\n\n{self.code}\n\nWhy: {self.why}"

    def _repr_markdown_(self) -> str:
        return f"**Notebook {self.notebook}, exercise {self.number}**\n\n```python\n{self.code}\n```\n\n{self.why}"


def _entry(notebook: str, number: int, code: str, why: str) -> Solution:
    return Solution(notebook, number, textwrap.dedent(code).strip(), " ".join(why.split()))


SOLUTIONS: tuple[Solution, ...] = (
    # 01 · Numbers
    _entry(
        "01",
        1,
        "answer = 70e9 * 16 / 8 / 1e9  # parameters × bits / 8 bits per byte / 10^9 bytes per GB",
        """Weight memory is parameters × bits ÷ 8 bytes: 140 GB. GB means 10^9 bytes here, as on model cards;
        activations and the KV cache come on top.""",
    ),
    _entry(
        "01",
        2,
        "answer = 70e9 * 4 / 8 / 1e9  # a quarter of the FP16 size",
        """The same count with 4 bits: 35 GB. A real 4-bit file also stores a scale (and a zero point) per group,
        about 4.16 bits per weight with groups of 128 (section 6).""",
    ),
    _entry(
        "01",
        3,
        "answer = 2 ** (0b1111 - 7) * (1 + 0b110 / 8)  # 2^8 × 1.75",
        """E4M3fn has no infinity, so the all-ones exponent 1111 holds ordinary values: 2^(15 − 7) = 256. With that
        exponent the mantissa 111 is NaN, so the largest mantissa is 110 = 6/8, and 256 × 1.75 = 448.""",
    ),
    _entry(
        "01",
        4,
        "answer = 2**-4 * round(1.6 * 2**7) / 2**7  # 1.6 × 128 = 204.8 rounds to 205",
        """0.1 = 2^-4 × 1.6, and BF16 keeps 7 mantissa bits: 1.6 becomes the nearest multiple of 1/128, 205/128.
        So BF16 stores 0.10009765625, a little above 0.1 (truncating the bits would give 0.099609375).""",
    ),
    _entry(
        "01",
        5,
        'answer = float("inf")  # 70000 > 65504, the largest FP16 value',
        """FP16 has only 5 exponent bits, so its range ends at 65504, and an IEEE format overflows to infinity
        instead of saturating. BF16 has FP32's 8 exponent bits and stores 70144.""",
    ),
    # 02 · Linear quantization
    _entry(
        "02",
        1,
        """
        def absmax_quantize(w, bits):
            # return (codes, scale): symmetric, one scale for the whole tensor
            scale = w.abs().max() / (2 ** (bits - 1) - 1)  # the largest |w| lands on the largest code
            codes = torch.round(w / scale)  # round half to even, as qviz does
            return codes, scale
        """,
        """Absmax maps max|w| to q_max = 2^(b−1) − 1 (127 at 8 bits, 7 at 4 bits), so no weight is ever clipped.
        torch.round rounds halves to even; floor or int() would shift every code.""",
    ),
    _entry(
        "02",
        2,
        """
        def zero_point_quantize(w, bits):
            # return (codes, scale, zero_point): asymmetric, range widened to include 0
            lo, hi = min(w.min().item(), 0.0), max(w.max().item(), 0.0)  # 0 must stay exact
            scale = (hi - lo) / (2**bits - 1)
            zero_point = round(-lo / scale)  # the code that stands for 0.0
            codes = torch.clamp(torch.round(w / scale) + zero_point, 0, 2**bits - 1)
            return codes, scale, zero_point
        """,
        """All 2^b codes 0 … 2^b − 1 are spread over [min, max], widened to include 0 so that 0.0 is a code.
        The zero point shifts the rounded values into that range, and the clamp keeps them there.""",
    ),
    _entry(
        "02",
        3,
        "answer = next(b for b in range(2, 17) if sqnr_db(W, fake_quantize(W, QuantSpec(bits=b))) >= 30)",
        """Take the first bit width whose per-row symmetric quantization reaches 30 dB: the first point of the
        "one scale per row" line above the 30 dB level in the figure. Each extra bit adds about 6 dB.""",
    ),
    _entry(
        "02",
        4,
        "answer = 4 + (16 + 4) / 64  # code bits + (a 16-bit scale + a 4-bit zero point) per 64 weights",
        """Each group of 64 weights stores 64 × 4 code bits, one 16-bit scale and one 4-bit zero point:
        4.3125 bits per weight. The shape only has to be divisible into groups; it does not change the answer.""",
    ),
    # 03 · Real weights and activations
    _entry(
        "03",
        1,
        """
        down = [r for r in act_rows if r["name"] == "mlp.down_proj"]
        answer = max(down, key=lambda r: r["ratio"])["layer"]
        """,
        """act_rows (section 3) holds every linear's activation outlier ratio: the largest input channel's mean |x|
        over the median channel's. The answer is the brightest cell of the down_proj row of the heatmap;
        section 3's `worst` found the same layer.""",
    ),
    _entry(
        "03",
        2,
        "answer_mb = n_linear * (4 + (16 + 4) / 64) / 8 / 1e6  # bits per weight × weights, in 10^6 bytes",
        """Each group of 64 weights adds a 16-bit scale and a 4-bit zero point: 4 + 20/64 = 4.3125 bits per
        weight, about 8% more than the codes alone.""",
    ),
    # 04 · Round-to-nearest
    _entry(
        "04",
        1,
        """
        within = [r for r in results if r["ppl"] <= ref_ppl * 1.10]  # at most 10% above the reference
        answer = min(within, key=lambda r: r["linear_mb"])["label"] if within else None
        """,
        """Keep the settings that lose at most 10% of perplexity, then take the one with the fewest megabytes.
        Scales cost storage too, so the smallest qualifying setting is found in the MB column, not the bits.""",
    ),
    _entry(
        "04",
        2,
        "answer = math.exp(0.05)  # about 1.0513: perplexity grows by 5.1%",
        """Perplexity is exp(mean NLL), so adding Δ to the mean NLL multiplies perplexity by exp(Δ).
        For small Δ that is close to 1 + Δ.""",
    ),
    # 05 · GPTQ
    _entry(
        "05",
        1,
        """
        grid = [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)]  # each weight rounded down or up
        errors = [((X_toy @ (w_toy - torch.tensor(q, dtype=torch.float64))) ** 2).mean().item() for q in grid]
        answer = grid[errors.index(min(errors))]
        """,
        """The output error is the mean of ((w − q)·x)², not ‖w − q‖². Since x₁ ≈ x₂, rounding w₁ up and w₂ down
        gives errors of opposite sign that partly cancel in the output, while rounding both up adds them.""",
    ),
    _entry(
        "05",
        2,
        """
        Hinv = torch.linalg.inv(H_toy)
        q1 = torch.round(w_toy[0])  # w₁ = 0.8 is rounded to 1
        answer = (w_toy[1] - (w_toy[0] - q1) * Hinv[0, 1] / Hinv[0, 0]).item()
        """,
        """Once w₁ is rounded, the OBQ update moves w₂ by −(w₁ − q₁)·[H⁻¹]₁₂ / [H⁻¹]₁₁ to repair the output.
        Because x₁ ≈ x₂, w₂ moves down to make up for w₁ rounding up by 0.2, and then rounds to 0: Exercise 1's
        best grid point.""",
    ),
    _entry(
        "05",
        3,
        "answer = max(ppl, key=ppl.get)  # the label with the highest perplexity",
        """A higher perplexity on the evaluation prose is worse, so the answer is the largest value of the table.
        The point: GPTQ fits its calibration text, and calibrating on text unlike the one it will meet can cost
        more than it gains.""",
    ),
    # 06 · AWQ
    _entry(
        "06",
        1,
        "answer = X.abs().mean(0).topk(round(0.01 * X.shape[1])).indices  # largest mean |x_j| over tokens",
        """AWQ ranks input channels by the mean magnitude of their activations over the calibration tokens
        (`mean_abs(X)`), not by their weights: an error in column j reaches the output multiplied by x_j.""",
    ),
    _entry(
        "06",
        2,
        "answer = (1 + w) / s - 1",
        """Gemma's norm multiplies by (1 + w), so dividing its output by s needs 1 + w' = (1 + w)/s. Llama's fold
        w/s would scale only the w part and leave the 1 unscaled.""",
    ),
    _entry(
        "06",
        3,
        "answer = single.alphas[single.losses.index(min(single.losses))]  # the lowest point of the curve",
        """The search keeps the α with the smallest output loss, the star on the curve (`single.alpha` holds it).
        α = 0 is plain rounding and is on the grid, so the chosen α is never worse than RTN on these tokens.""",
    ),
    # 07 · INT4 on the GPU
    _entry(
        "07",
        1,
        "answer = 4096 * 4096 * 4 // 32  # 32 / 4 = 8 codes per int32 word",
        """An int32 word holds 32 / 4 = 8 four-bit codes, so 4096 × 4096 codes need 2,097,152 words:
        8 MiB, against 32 MiB for the same weight in FP16.""",
    ),
    _entry(
        "07",
        2,
        'answer = 100e9 / sum(bytes_per_token["INT4"].values())  # bytes per second / bytes per token',
        """At batch 1 every weight is read once per token, so decoding is capped at bandwidth ÷ bytes read per
        token, with 100 GB/s = 100 × 10^9 bytes/s. Real kernels reach only part of this bound.""",
    ),
    _entry(
        "07",
        3,
        'answer = sum(bytes_per_token["FP16"].values()) / sum(bytes_per_token["INT4"].values())',
        """The bound follows all the bytes read per token. The decoder linears shrink about 4×, but the lm_head
        (Gemma's tied embedding) stays in 16 bits and is read in full for every token.""",
    ),
    # 08 · Activations
    _entry(
        "08",
        1,
        "answer = 2 * 32 * 8 * 128 * 2 * 32768 / 2**30  # K and V × layers × KV heads × head_dim × 2 bytes × tokens",
        """Every layer caches a key and a value per token for each of the 8 KV heads (grouped-query attention: not
        the 32 query heads), 2 bytes per FP16 number: 131,072 bytes per token, 4 GiB for 32,768 tokens.""",
    ),
    # 09 · Formats
    _entry(
        "09",
        1,
        "answer = (2 + 2 + 12 + 128) * 8 / 256  # d, dmin, 6-bit scales and mins, 4-bit codes: bytes × 8 / weights",
        """A Q4_K super-block holds 256 weights in 144 bytes: 4 bits of code per weight, plus half a bit for the two
        float16 scales and the sixteen 6-bit sub-block scales and mins that decode them.""",
    ),
    _entry(
        "09",
        2,
        "answer = 2.0 ** (math.floor(math.log2(5.0)) - 2)  # 2^(2 - 2)",
        """E8M0 stores only powers of two. MXFP4 picks the one that puts the block's largest value into E2M1's
        top binade [4, 8): floor(log2 5) = 2, so the scale is 2^0 = 1.""",
    ),
    # 10 · QAT and tasks
    _entry(
        "10",
        1,
        """
        # W / s = [0.6, -2.2, 5.2]; the codes run from -4 to 3, so only 2.6 is clipped
        answer = [1, 1, 0]
        """,
        """The straight-through estimator treats round() as the identity on the way back, but the clamp keeps its
        own gradient: 1 where W/s lands inside the codes, 0 where it was clipped.""",
    ),
    _entry(
        "10",
        2,
        'answer = round(m["n_tokens"] * (1 - m["top1"]))  # the tokens whose top-1 prediction changed',
        """top1 is the fraction of tokens whose most likely next token stayed the same; the flips are the other
        1 − top1 of them.""",
    ),
    _entry(
        "10",
        3,
        "answer = abs(change) > half  # real only when the interval change ± half excludes 0",
        """The interval is the noise of this many paired items. The change is real only if the whole interval
        lies on one side of zero; if it reaches zero, these items cannot tell, which is not the same as "no
        change".""",
    ),
    # 11 · Choose and ship
    _entry(
        "11",
        1,
        "answer = 2 * 32 * 32 * 128 * 2 * 4096 / 2**30  # K and V × layers × KV heads × head_dim × 2 bytes × tokens",
        """Every layer keeps a key and a value vector per KV head for every token: 2 GiB at 4,096 tokens. Without
        grouped-query attention (Llama 2 has 32 KV heads, Llama 3 8), that is a third of a 6 GB GPU.""",
    ),
)


def _exercises() -> dict[str, list[int]]:
    """notebook -> its exercise numbers, in order."""
    found: dict[str, list[int]] = {}
    for s in SOLUTIONS:
        found.setdefault(s.notebook, []).append(s.number)
    return found


def _listing() -> str:
    return "; ".join(f"notebook {nb}: {', '.join(map(str, numbers))}" for nb, numbers in _exercises().items())


def solution(notebook: str | int, number: int) -> Solution:
    """The worked solution of exercise `number` of `notebook` ("05", "5" or 5). Shows as code and text in a
    notebook; `.code` is the code alone. Raises ValueError, listing the exercises there are, for any other pair.
    """
    text = str(notebook).strip()
    key = f"{int(text):02d}" if text.isdigit() else text
    for s in SOLUTIONS:
        if s.notebook == key and s.number == number and not isinstance(number, bool):
            return s
    if key not in _exercises():
        raise ValueError(f"no notebook {notebook!r} with exercises; the exercises are: {_listing()}")
    raise ValueError(
        f"notebook {key} has no exercise {number!r}; its exercises are {', '.join(map(str, _exercises()[key]))}"
    )
