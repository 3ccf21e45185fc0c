"""qviz's GPTQ against llm-compressor's GPTQ on the same model, windows and spec, in one run; writes RESULTS.md.

    python bench/peer_gptq_llmcompressor.py --peer-python /work/peer-venv/bin/python --calib-n 32

The peer runs in its own virtual environment (llm-compressor pins an older transformers), as a subprocess
running bench/peer_llmcompressor_side.py on qviz's cached float safetensors folder
(`qviz.models.cached_model_dir`). Both sides get the same calibration windows (`qviz.data.calib_windows`,
BOS-prefixed as `qviz.calib` does, saved to a .pt file) and the same spec: INT4 symmetric, group size
`--group-size`, act-order off, damping 0.01, lazy blocks of 128, every linear of the decoder layers (embeddings
and lm_head stay float). SmolLM2's in_features 576 is not a multiple of 128, so group 128 is impossible on
every q/k/v/o/gate/up there: 64 is the default. The two quantizations run one after the other in this one
invocation, so they see comparable machine load. The peer's dequantized weights come back into a copy of the
same float model; both are scored by `qviz.eval` on the same evaluation windows.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing qviz

from _peer import (  # noqa: E402
    add_common_args,
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

from qviz import gptq  # noqa: E402
from qviz.quant import QuantSpec  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")
PEER_SIDE = Path(__file__).with_name("peer_llmcompressor_side.py")
START, END = (
    "<!-- bench/peer_gptq_llmcompressor.py: start -->",
    "<!-- bench/peer_gptq_llmcompressor.py: end -->",
)
COLUMNS = [
    ("perplexity", "ppl", ".2f"),
    ("KL (nats)", "kl", ".4f"),
    ("top-1 agree", "top1", ".3f"),
    ("weights identical to the peer's", "same", ".1%"),
    ("quantize time (s)", "seconds", ".1f"),
]


def variants(group_size: int) -> list[tuple[str, QuantSpec, dict]]:
    """(label, spec, GPTQ options) of the qviz runs.

    "qviz" is qviz's own GPTQ: a group's scale is absmax / 7 of its error-compensated weights, chosen when
    GPTQ reaches the group (the paper's reference code). llm-compressor 0.14 instead takes every group's scale
    from the original weights before GPTQ starts (its observer), and compressed-tensors' symmetric scale is
    absmax / ((qmax - qmin) / 2) = absmax / 7.5, so the code -8 is used. "qviz, peer's grid" reproduces that
    with qviz's own options: static_groups=True and clip_ratio = 7 / 7.5.
    """
    spec = QuantSpec(bits=4, symmetric=True, granularity="group", group_size=group_size)
    peer_grid = QuantSpec(
        bits=4, symmetric=True, granularity="group", group_size=group_size, clip_ratio=14 / 15
    )
    return [("qviz", spec, {}), ("qviz, peer's grid", peer_grid, {"static_groups": True})]


def run(args) -> dict:
    ref, folder, cal, ids, bos = prepare(args)
    load = [os.getloadavg()[0]]

    models, seconds = {"reference": ref}, {}
    for label, spec, options in variants(args.group_size):
        models[label] = copy.deepcopy(ref)
        start = time.perf_counter()
        gptq.quantize_model(models[label], spec, cal, damp=0.01, block_size=128, progress=False, **options)
        seconds[label] = time.perf_counter() - start
        load.append(os.getloadavg()[0])
        print(f"{label}: {seconds[label]:.1f} s", flush=True)

    options = ["--group-size", str(args.group_size)]
    peer, peer_process_seconds = run_peer(
        args.peer_python, PEER_SIDE, folder, cal, bos, options, args.threads, args.peer_timeout
    )
    load.append(os.getloadavg()[0])
    seconds["llm-compressor"] = peer["seconds"]
    print(f"peer: {peer['seconds']:.1f} s inside oneshot, {peer_process_seconds:.1f} s process", flush=True)

    models["llm-compressor"] = copy.deepcopy(ref)
    if peer["actorder"] != ["None"]:
        raise RuntimeError(f"the peer ran with act-order {peer['actorder']}, not off")
    off_grid = load_peer_weights(models["llm-compressor"], peer, bits=4)
    scores = evaluate(models, ids, seconds, same_as=models["llm-compressor"])
    load.append(os.getloadavg()[0])
    return {
        "scores": scores,
        "peer_process_seconds": peer_process_seconds,
        "peer_versions": peer["versions"],
        "peer_actorder": peer["actorder"],
        "off_grid": off_grid,
        "load": load,
    }


def section(r: dict, args) -> str:
    s = r["scores"]
    verdicts = [
        verdict(label, s[label], s["llm-compressor"], 0.5) for label, _, _ in variants(args.group_size)
    ]
    return "\n".join(
        [
            START,
            f"## GPTQ: qviz versus llm-compressor on {args.model} (bench/peer_gptq_llmcompressor.py)",
            "",
            machine_line(r["load"], args.threads),
            versions_line(r["peer_versions"]),
            f"- command: `python bench/peer_gptq_llmcompressor.py {' '.join(sys.argv[1:])}`",
            f"- model: qviz's cached float folder of {args.model} (the dequantized GGUF release), float32 on "
            "both sides",
            f"- spec (all): INT4 symmetric, group {args.group_size}, act-order off, damping 0.01, block 128, "
            "every linear of the decoder layers (embeddings and lm_head float). Group 128 is impossible on "
            "SmolLM2 (in_features 576 is not a multiple of 128; llm-compressor 0.14 refuses such layers unless "
            'they are ignored). "qviz, peer\'s grid" = static_groups=True, clip_ratio=14/15 (scale absmax/7.5 '
            "from the original weights, as llm-compressor does); see `variants`",
            f"- calibration: {args.calib_n} x {args.calib_seqlen} tokens (`calib_windows`, seed 0), each "
            f"prefixed with BOS, identical rows on both sides; evaluation: {args.eval_n} x {args.eval_seqlen} "
            "Britannica tokens (`eval_windows`), scored by `qviz.eval` (BOS-prefixed)",
            "- time: qviz = `gptq.quantize_model`; peer = the `oneshot` call (its calibration forward passes, "
            "GPTQ and bookkeeping; model load and imports excluded: the whole peer process took "
            f"{r['peer_process_seconds']:.1f} s). Wall time on a shared machine",
            f"- check: the peer's weights lie on its INT4 grid (largest |W/scale - code| {r['off_grid']:.1e}); "
            f"act-order the peer's layers report after oneshot: {r['peer_actorder']}",
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
    args = parser.parse_args()
    text = section(run(args), args)
    print(text, flush=True)
    if not args.no_write:
        write_section(args.results, START, END, text)  # re-reads the file: others write other sections


if __name__ == "__main__":
    main()
