"""qviz's AWQ against llm-compressor's AWQ on the same model, windows and spec, in one run; writes RESULTS_AWQ.md.

    python bench/peer_awq_llmcompressor.py --peer-python /work/peer-venv/bin/python --calib-n 16 \
        --calib-seqlen 256 --search-tokens 257 512 1028 all

(the recorded run: 15 minutes on the idle 2-core machine, 5.6 of them the peer's search on all tokens; the
defaults are 32 x 512 calibration tokens, 2 x 512 evaluation tokens, one torch thread on each side.)

The peer runs in its own virtual environment as a subprocess running bench/peer_llmcompressor_awq_side.py on
qviz's cached float safetensors folder (`qviz.models.cached_model_dir`), with llm-compressor's own AWQ defaults
(`AWQModifier()`: duo_scaling=True, n_grid=20, mappings inferred from the model class) followed by a
`QuantizationModifier` for W4A16 asymmetric group `--group-size` (its default min-max weight observer); the
`--peer-*` flags change those. Both sides get the same calibration windows (`qviz.data.calib_windows`,
BOS-prefixed as `qviz.calib` does) and the same spec: INT4 asymmetric, group 64 by default (SmolLM2's
in_features 576 rules out 128), every linear of the decoder layers (embeddings and lm_head stay float). qviz
runs `qviz.awq.quantize_model` once per `--search-tokens` value (default: the library's AWQConfig()). The
quantizations run one after the other in this one invocation, so they see comparable machine load. The peer's
dequantized weights and its folded norms come back into a copy of the same float model; every model is scored
by `qviz.eval` on the same evaluation windows. The section between the markers in `--results` is replaced.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing qviz

from _peer import (  # noqa: E402
    add_common_args,
    decoder_linear_names,
    evaluate,
    load_peer_weights,
    machine_line,
    prepare,
    run_peer,
    table,
    verdict,
    versions_line,
    write_section,
)

from qviz import awq  # noqa: E402
from qviz.quant import QuantSpec  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS_AWQ.md")
PEER_SIDE = Path(__file__).with_name("peer_llmcompressor_awq_side.py")
START, END = (
    "<!-- bench/peer_awq_llmcompressor.py: start -->",
    "<!-- bench/peer_awq_llmcompressor.py: end -->",
)
COLUMNS = [
    ("scale-search tokens", "search", "d"),
    ("perplexity", "ppl", ".2f"),
    ("KL (nats)", "kl", ".4f"),
    ("top-1 agree", "top1", ".3f"),
    ("quantize time (s)", "seconds", ".1f"),
]
MAX_RATIO = 0.25  # goal: qviz at least 4x faster than the peer


def search_tokens(text: str) -> int | None:
    """--search-tokens value: a positive integer, or "all" (every calibration token, as the peer does)."""
    if text == "all":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a search token count is a positive integer or 'all', got {text!r}")
    return int(text)


def changed_linears(ref, model) -> int:
    """How many decoder linears of `model` hold a weight different from the float reference's."""
    return sum(
        not torch.equal(ref.get_submodule(n).weight, model.get_submodule(n).weight)
        for n in decoder_linear_names(ref)
    )


def run(args) -> dict:
    ref, folder, cal, ids, bos = prepare(args)
    spec = QuantSpec(bits=4, symmetric=False, granularity="group", group_size=args.group_size)
    load = [os.getloadavg()[0]]

    models, seconds, searched = {"reference": ref}, {}, {}
    for tokens in args.search_tokens:
        config = awq.AWQConfig(search_tokens=tokens)
        label = "qviz, defaults" if config == awq.AWQConfig() else f"qviz, search_tokens={tokens}"
        models[label] = copy.deepcopy(ref)
        start = time.perf_counter()
        result = awq.quantize_model(models[label], spec, cal, config, progress=False)
        seconds[label] = time.perf_counter() - start
        searched[label] = result.scale_groups[0]["search_tokens"]  # whole windows: at least `tokens`
        load.append(os.getloadavg()[0])
        print(f"{label}: {seconds[label]:.1f} s", flush=True)

    options = ["--group-size", str(args.group_size), "--duo-scaling", args.peer_duo_scaling]
    options += ["--n-grid", str(args.peer_n_grid)]
    if args.peer_observer:
        options += ["--observer", args.peer_observer]
    peer, peer_process_seconds = run_peer(
        args.peer_python, PEER_SIDE, folder, cal, bos, options, args.threads, args.peer_timeout
    )
    load.append(os.getloadavg()[0])
    seconds["llm-compressor"] = peer["seconds"]
    searched["llm-compressor"] = cal.shape[0] * (cal.shape[1] + 1)  # its grid search reruns every batch
    print(f"peer: {peer['seconds']:.1f} s inside oneshot, {peer_process_seconds:.1f} s process", flush=True)

    models["llm-compressor"] = copy.deepcopy(ref)
    off_grid = load_peer_weights(models["llm-compressor"], peer, bits=4)
    changed = changed_linears(ref, models["llm-compressor"])
    if changed != len(peer["linears"]):
        raise RuntimeError(f"only {changed} of the peer's {len(peer['linears'])} quantized linears changed")
    scores = evaluate(models, ids, seconds)
    for label, n in searched.items():
        scores[label]["search"] = n
    load.append(os.getloadavg()[0])
    return {
        "scores": scores,
        "peer_process_seconds": peer_process_seconds,
        "peer_versions": peer["versions"],
        "peer_options": peer["options"],
        "peer_params_changed": len(peer["params_changed"]),
        "peer_pin_skipped": peer["pin_memory_skipped"],
        "changed": changed,
        "off_grid": off_grid,
        "load": load,
    }


def section(r: dict, args) -> str:
    s = r["scores"]
    o = r["peer_options"]
    verdicts = [
        verdict(label, sc, s["llm-compressor"], MAX_RATIO) for label, sc in s.items() if "qviz" in label
    ]
    n_cal = args.calib_n * (args.calib_seqlen + 1)
    return "\n".join(
        [
            START,
            f"## AWQ: qviz versus llm-compressor on {args.model} (bench/peer_awq_llmcompressor.py)",
            "",
            machine_line(r["load"], args.threads),
            versions_line(r["peer_versions"]),
            f"- command: `python bench/peer_awq_llmcompressor.py {' '.join(sys.argv[1:])}`",
            f"- model: qviz's cached float folder of {args.model} (the dequantized GGUF release), float32 on "
            "both sides",
            f"- spec (all): INT4 asymmetric, group {args.group_size}, every linear of the decoder layers "
            "(embeddings and lm_head float). Group 128 is impossible on SmolLM2 (in_features 576 is not a "
            "multiple of 128; llm-compressor 0.14 refuses such layers unless they are ignored)",
            "- qviz: `awq.quantize_model(model, spec, windows, AWQConfig(search_tokens=...))`, otherwise the "
            "library defaults: α ∈ {0, 0.05, ..., 0.95}, s = s_x^α normalised by sqrt(max·min), s_x = mean|X| "
            "over all calibration tokens; the loss on the output of the attention block (q/k/v), the MLP "
            "(gate/up) or down_proj (up -> down), on the given number of search tokens (whole windows, evenly "
            "spaced); then a clipping search per group (max shrunk by 1 - i/20, i < 10, on the output error "
            "of the search tokens) for every linear except q/k; each quantized layer feeds the next",
            f"- peer: `AWQModifier(duo_scaling={o['duo_scaling']}, n_grid={o['n_grid']})` (mappings inferred: "
            "input_layernorm -> q,k,v; v_proj -> o_proj, skipped on SmolLM2's GQA shapes as in qviz; "
            "post_attention_layernorm -> gate,up; up_proj -> down_proj), then `QuantizationModifier` "
            f"(asymmetric INT4 group {args.group_size}, lm_head ignored; weight observer {o['observer']})",
            f"- where the algorithms differ: (1) grid: with duo_scaling=True (its default; here "
            f"{o['duo_scaling']}) the peer tries s = x̄^r / (w̄^(1-r) + 1e-4), r ∈ {{0, 1/18, ..., 1}}, plus "
            "s = 1 (False: s = x̄^r, r ∈ {0, 1/19, ..., 1}), where w̄ is each input channel's mean "
            "|W|/group max over the balance layers (AutoAWQ's form), qviz the paper's s = s_x^α; (2) tokens: "
            f"the peer's grid search reruns each mapping's module on all {n_cal} calibration tokens, qviz on "
            "`search_tokens`; (3) clipping: qviz searches it on the output error; the peer's default min-max "
            "observer keeps each group's full range (its memoryless_mse observer would shrink a range by up to "
            "20% to minimise the weight error sum |W - Q(W)|^2.4, after the scale search, which always uses "
            "min-max); (4) propagation: the peer calibrates every layer on "
            "the float model's activations (its sequential pipeline runs with quantization disabled, the AWQ "
            "transform leaves the weights float, and QuantizationModifier quantizes afterwards without data), "
            "qviz on the outputs of the already quantized layers; (5) the grids are the same up to a shift: "
            "compressed-tensors codes [-8, 7] with a signed zero point, qviz [0, 15]",
            f"- calibration: {args.calib_n} x {args.calib_seqlen} tokens (`calib_windows`, seed 0), each "
            f"prefixed with BOS, identical rows on both sides; evaluation: {args.eval_n} x {args.eval_seqlen} "
            "Britannica tokens (`eval_windows`), scored by `qviz.eval` (BOS-prefixed)",
            "- time: qviz = `awq.quantize_model`; peer = the `oneshot` call (its calibration forward passes, "
            "the AWQ search and bookkeeping, the quantization; model load and imports excluded: the whole "
            f"peer process took {r['peer_process_seconds']:.1f} s). Wall time on a shared machine",
            f"- check: the peer's weights lie on its INT4 grid (largest |W/scale + zero_point - code| "
            f"{r['off_grid']:.1e}); {r['changed']} of its quantized linears differ from the float weights; "
            f"it changed {r['peer_params_changed']} other decoder parameters (the norms holding the folded "
            "1/s), loaded too"
            + (
                "; llm-compressor's pin_memory of its cached inputs fails without an accelerator, so the peer "
                "side skips it (a transfer hint, no value changes)"
                if r["peer_pin_skipped"]
                else ""
            ),
            "",
            table(s, COLUMNS),
            "",
            *verdicts,
            END,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, RESULTS)
    parser.add_argument(
        "--search-tokens",
        nargs="+",
        type=search_tokens,
        default=[awq.AWQConfig().search_tokens],
        help="qviz's scale-search token counts, one qviz run each ('all': every calibration token); "
        "default: the library's",
    )
    parser.add_argument("--peer-duo-scaling", choices=["true", "false", "both"], default="true")
    parser.add_argument("--peer-n-grid", type=int, default=20)
    parser.add_argument(
        "--peer-observer",
        default="",
        help="peer's weight observer, e.g. memoryless_mse (default: the library's min-max)",
    )
    args = parser.parse_args()
    text = section(run(args), args)
    print(text, flush=True)
    if not args.no_write:
        write_section(args.results, START, END, text)  # re-reads the file: others write other sections


if __name__ == "__main__":
    main()
