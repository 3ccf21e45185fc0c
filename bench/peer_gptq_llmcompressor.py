"""qviz's GPTQ against llm-compressor's GPTQ on the same model, windows and spec, in one run; writes RESULTS.md.

    python bench/peer_gptq_llmcompressor.py --peer-python /work/peer-venv/bin/python --calib-n 32

The peer runs in its own virtual environment (llm-compressor pins an older transformers), as a subprocess
running bench/peer_llmcompressor_side.py on qviz's cached float safetensors folder
(`qviz.models.cached_model_dir`). Both sides get the same calibration windows (`qviz.data.calib_windows`,
BOS-prefixed as `qviz.calib` does, saved to a .pt file) and the same spec: INT4 symmetric, group size
`--group-size`, damping 0.01, lazy blocks of 128, every linear of the decoder layers (embeddings and lm_head
stay float). Two pairs run: each tool with its own defaults (both act-order "static": columns by descending
diag(H), group scales from the original weights, the full-range grid absmax/7.5), which is what a user gets,
and both with act-order off, which compares the algorithms alone (and is the setting of the speed goal). SmolLM2's in_features 576 is not a multiple of 128, so group 128 is impossible on
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
    ("KL p99", "kl_p99", ".3f"),
    ("top-1 agree", "top1", ".3f"),
    ("quantize time (s)", "seconds", ".1f"),
]


PAIRS = [  # (label, qviz's GPTQ options, the peer side's --actorder): each tool's defaults, then act-order off
    ("defaults", {}, "default"),
    ("act-order off", {"act_order": False}, "none"),
]


def run(args) -> dict:
    ref, folder, cal, ids, bos = prepare(args)
    spec = QuantSpec(bits=4, symmetric=True, granularity="group", group_size=args.group_size)
    load = [os.getloadavg()[0]]
    models, seconds, peers = {"reference": ref}, {}, {}
    for pair, options, actorder in PAIRS:
        label = f"qviz, {pair}"
        models[label] = copy.deepcopy(ref)
        start = time.perf_counter()
        gptq.quantize_model(models[label], spec, cal, damp=0.01, block_size=128, progress=False, **options)
        seconds[label] = time.perf_counter() - start
        load.append(os.getloadavg()[0])
        print(f"{label}: {seconds[label]:.1f} s", flush=True)

        peer_label = f"llm-compressor, {pair}"
        peer, process_seconds = run_peer(
            args.peer_python, PEER_SIDE, folder, cal, bos, ["--group-size", str(args.group_size), "--actorder", actorder],
            args.threads, args.peer_timeout,
        )  # fmt: skip
        load.append(os.getloadavg()[0])
        seconds[peer_label] = peer["seconds"]
        print(
            f"{peer_label}: {peer['seconds']:.1f} s inside oneshot, {process_seconds:.1f} s process",
            flush=True,
        )
        if (actorder == "none") != (peer["actorder"] == ["None"]):
            raise RuntimeError(f"the peer ran with act-order {peer['actorder']}, asked for {actorder}")
        models[peer_label] = copy.deepcopy(ref)
        peers[pair] = {**peer, "process_seconds": process_seconds,
                       "off_grid": load_peer_weights(models[peer_label], peer, bits=4)}  # fmt: skip
    scores = evaluate(models, ids, seconds)
    load.append(os.getloadavg()[0])
    return {"scores": scores, "peers": peers, "load": load}


def section(r: dict, args) -> str:
    s, peers = r["scores"], r["peers"]
    any_peer = next(iter(peers.values()))
    kl_goal = s["qviz, defaults"]["kl"] <= s["llm-compressor, defaults"]["kl"]
    return "\n".join(
        [
            START,
            f"## GPTQ: qviz versus llm-compressor on {args.model} (bench/peer_gptq_llmcompressor.py)",
            "",
            machine_line(r["load"], args.threads),
            versions_line(any_peer["versions"]),
            f"- command: `python bench/peer_gptq_llmcompressor.py {' '.join(sys.argv[1:])}`",
            f"- model: qviz's cached float folder of {args.model} (the dequantized GGUF release), float32 on "
            "both sides",
            f"- spec (all): INT4 symmetric, group {args.group_size}, damping 0.01, block 128, every linear of the "
            'decoder layers (embeddings and lm_head float). "defaults": each tool\'s own (both act-order '
            'static, full-range grid absmax/7.5); "act-order off": both told so',
            f"- calibration: {args.calib_n} x {args.calib_seqlen} tokens (`calib_windows`, seed 0), each "
            f"prefixed with BOS, identical rows on both sides; evaluation: {args.eval_n} x {args.eval_seqlen} "
            "Britannica tokens (`eval_windows`), scored in one pass by `qviz.eval.evaluate` (BOS-prefixed)",
            "- time: qviz = `gptq.quantize_model`; peer = the `oneshot` call (its calibration forward passes, "
            "GPTQ and bookkeeping; model load and imports excluded: the peer processes took "
            + ", ".join(f"{p['process_seconds']:.1f} s" for p in peers.values())
            + "). Wall time on a shared machine",
            "- check: the peer's weights lie on its INT4 grid (largest |W/scale - code| "
            + ", ".join(f"{p['off_grid']:.1e}" for p in peers.values())
            + "); act-order the peer's layers report after oneshot: "
            + ", ".join(f"{pair}: {p['actorder']}" for pair, p in peers.items()),
            "",
            table(s, COLUMNS),
            "",
            f"- defaults against defaults, KL to the reference: qviz {s['qviz, defaults']['kl']:.4f}, "
            f"llm-compressor {s['llm-compressor, defaults']['kl']:.4f} (goal: qviz's at most the peer's): "
            f"**{'met' if kl_goal else 'NOT met'}**",
            *[
                verdict(f"qviz, {pair}", s[f"qviz, {pair}"], s[f"llm-compressor, {pair}"], 0.5)
                for pair, _, _ in PAIRS
            ],
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
