"""A qviz run handed to llm-compressor as a recipe file: does its oneshot, reading only the YAML that
`qviz.export.write_llmcompressor_recipe` wrote, quantize as qviz does? Writes RESULTS_RECIPE.md.

    python bench/peer_recipe_llmcompressor.py --peer-python /work/peer-venv/bin/python --calib-n 16

The run is the GPTQ of bench/peer_gptq_llmcompressor.py with the tools' defaults, as a `qviz.runs.Run`:
INT4 symmetric, group `--group-size` (64: SmolLM2's in_features 576 rules out 128), damping 0.01, lazy blocks
of 128, act-order with static groups, every linear of the decoder layers, calibrated on `--calib-n` x
`--calib-seqlen` Britannica tokens (`qviz.data.calib_windows`, as `qviz.runs.quantize` takes them). qviz
quantizes with `gptq.quantize_model(model, run.spec, windows, **run.options)`, as `runs.quantize` does.

The peer side is this same file run with --side in llm-compressor's own virtual environment (set up as the
README says: `python -m venv peer-venv && peer-venv/bin/pip install torch==2.13.0 llmcompressor==0.14.0.1`),
started by `_peer.run_peer` on qviz's cached float folder; there it imports only torch, yaml and
llm-compressor. It calls `oneshot(recipe=<the YAML file>, dataset=<the same windows, BOS first>,
**recipe["calibration"]["oneshot"])` (checking that those arguments describe the windows it was given), and
saves its dequantized weights. Every model is scored by `qviz.eval` on the same evaluation windows; the
section between the markers in `--results` is replaced, with the recipe that ran.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS_RECIPE.md")
START, END = (
    "<!-- bench/peer_recipe_llmcompressor.py: start -->",
    "<!-- bench/peer_recipe_llmcompressor.py: end -->",
)
COLUMNS = [
    ("perplexity", "ppl", ".2f"),
    ("KL (nats)", "kl", ".4f"),
    ("KL p99", "kl_p99", ".3f"),
    ("top-1 agree", "top1", ".3f"),
    ("weights equal to qviz's", "same", ".3f"),
    ("quantize time (s)", "seconds", ".1f"),
]


def side() -> None:
    """The peer's half, in llm-compressor's environment: oneshot with the recipe file, then the weights out."""
    import torch
    import yaml
    from _peer_side import load, parser, versions

    ap = parser("llm-compressor's oneshot reading a qviz recipe file")
    ap.add_argument("--side", action="store_true")
    ap.add_argument("--recipe", required=True, help="YAML written by qviz.export.write_llmcompressor_recipe")
    args = ap.parse_args()
    model, dataset, calib = load(args)
    oneshot_args = yaml.safe_load(Path(args.recipe).read_text())["calibration"]["oneshot"]
    described = (oneshot_args["num_calibration_samples"], oneshot_args["max_seq_length"])
    if described != tuple(calib.shape):
        raise SystemExit(
            f"the recipe describes {described} windows x tokens, the qviz side sent {tuple(calib.shape)}"
        )

    from compressed_tensors.quantization import forward_quantize
    from llmcompressor import oneshot

    start = time.perf_counter()
    oneshot(model=model, dataset=dataset, recipe=args.recipe, **oneshot_args)
    seconds = time.perf_counter() - start

    linears, schemes = {}, set()
    # GPTQ leaves Q in .weight, which forward_quantize returns as it is (an RTN or AWQ weight it rounds)
    with torch.no_grad():
        for name, module in model.named_modules():
            if hasattr(module, "weight_scale"):
                scheme = module.quantization_scheme.weights
                schemes.add(repr(scheme))
                linears[name] = {
                    "weight": forward_quantize(module, module.weight, "weight", scheme).float().clone(),
                    "scale": module.weight_scale.detach().float().clone(),
                }
                if not scheme.symmetric:
                    linears[name]["zero_point"] = module.weight_zero_point.detach().float().clone()
    torch.save(
        {"seconds": seconds, "linears": linears, "versions": versions(), "schemes": sorted(schemes),
         "oneshot_args": oneshot_args, "threads": torch.get_num_threads()},
        args.out,
    )  # fmt: skip
    print(f"peer: {len(linears)} linears quantized in {seconds:.1f} s", flush=True)


def run(args) -> dict:
    """qviz's run and llm-compressor's oneshot on its recipe, then both scored against the float model."""
    import copy
    import os
    import tempfile

    import torch
    from _peer import evaluate, load_peer_weights, run_peer

    from qviz import gptq
    from qviz.data import calib_windows, eval_windows
    from qviz.export import write_llmcompressor_recipe
    from qviz.models import cached_model_dir, load_model
    from qviz.quant import QuantSpec
    from qviz.runs import Run

    torch.set_num_threads(args.threads)
    the_run = Run(args.model, "gptq", QuantSpec(bits=4, group_size=args.group_size), n_calib=args.calib_n,
                  calib_len=args.calib_seqlen)  # fmt: skip
    ref, tok = load_model(the_run.model, fresh=False)
    # the windows runs.quantize takes for this run
    windows = calib_windows(tok, the_run.calib, seqlen=the_run.calib_len, n=the_run.n_calib)
    ids = eval_windows(tok, seqlen=args.eval_seqlen, n=args.eval_n)
    load = [os.getloadavg()[0]]

    models, seconds = {"reference": ref, "qviz": copy.deepcopy(ref)}, {}
    start = time.perf_counter()
    gptq.quantize_model(models["qviz"], the_run.spec, windows, **the_run.options, progress=False)
    seconds["qviz"] = time.perf_counter() - start
    load.append(os.getloadavg()[0])
    print(f"qviz: {seconds['qviz']:.1f} s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        recipe = write_llmcompressor_recipe(the_run, Path(tmp, "recipe.yaml"), model=ref)
        text = recipe.read_text()
        peer, process_seconds = run_peer(
            args.peer_python, Path(__file__), cached_model_dir(the_run.model), windows, ref.config.bos_token_id,
            ["--side", "--recipe", str(recipe)], args.threads, args.peer_timeout,
        )  # fmt: skip
    load.append(os.getloadavg()[0])
    label = "llm-compressor, recipe file"
    seconds[label] = peer["seconds"]
    print(f"peer: {peer['seconds']:.1f} s inside oneshot, {process_seconds:.1f} s process", flush=True)
    models[label] = copy.deepcopy(ref)
    off_grid = load_peer_weights(models[label], peer, bits=the_run.spec.bits)
    scores = evaluate(models, ids, seconds, same_as=models["qviz"])
    load.append(os.getloadavg()[0])
    return {"scores": scores, "peer": {**peer, "process_seconds": process_seconds, "off_grid": off_grid},
            "load": load, "recipe": text, "run": the_run}  # fmt: skip


def section(r: dict, args) -> str:
    from _peer import machine_line, table, versions_line

    s, peer, the_run = r["scores"], r["peer"], r["run"]
    gap = s["qviz"]["kl"] / s["llm-compressor, recipe file"]["kl"] - 1
    return "\n".join([
        START,
        f"## A qviz run as an llm-compressor recipe, on {args.model} (bench/peer_recipe_llmcompressor.py)",
        "",
        machine_line(r["load"], args.threads).replace("after each qviz run", "after the qviz run"),
        versions_line(peer["versions"]),
        f"- command: `python bench/peer_recipe_llmcompressor.py {' '.join(sys.argv[1:])}`",
        f"- run: `{the_run!r}`: {the_run.label}, the tools' defaults (damping 0.01, block 128, act-order static); "
        "every linear of the decoder layers, embeddings and lm_head float",
        "- qviz: `gptq.quantize_model(model, run.spec, windows, **run.options)`, as `qviz.runs.quantize` does; "
        "llm-compressor: `oneshot(recipe=<the file below>, **calibration['oneshot'])` in its own venv, the recipe "
        "parsed by llm-compressor itself (no modifier built in code)",
        f"- calibration: {the_run.n_calib} x {the_run.calib_len} tokens (`calib_windows(tok, {the_run.calib!r}, "
        f"seqlen={the_run.calib_len}, n={the_run.n_calib})`), each prefixed with BOS, identical rows on both "
        f"sides; evaluation: {args.eval_n} x {args.eval_seqlen} Britannica tokens (`eval_windows`), scored in one "
        "pass by `qviz.eval.evaluate` (BOS-prefixed); model: qviz's cached float folder (the dequantized GGUF "
        "release), float32 on both sides",
        f"- time: qviz = `gptq.quantize_model`; peer = the `oneshot` call (model load and imports excluded: the "
        f"peer process took {peer['process_seconds']:.1f} s). Wall time on a shared machine",
        f"- check: the peer's weights lie on its INT{the_run.spec.bits} grid (largest |W/scale - code| "
        f"{peer['off_grid']:.1e}); the weight scheme its layers carry after oneshot: {'; '.join(peer['schemes'])}",
        "",
        table(s, COLUMNS),
        "",
        f"- KL to the reference: qviz {s['qviz']['kl']:.4f}, llm-compressor from the recipe "
        f"{s['llm-compressor, recipe file']['kl']:.4f} (qviz relative to the peer: {100 * gap:+.1f}%)",
        "",
        "The recipe that ran (`qviz.export.llmcompressor_recipe(run)`):",
        "",
        "```yaml",
        r["recipe"].rstrip("\n"),
        "```",
        END,
    ])  # fmt: skip


def main() -> None:
    if "--side" in sys.argv:
        side()
        return
    # run from a checkout without installing qviz
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from _peer import add_common_args, write_section

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, RESULTS)
    args = parser.parse_args()
    text = section(run(args), args)
    print(text, flush=True)
    if not args.no_write:
        write_section(args.results, START, END, text)  # re-reads the file: others write other sections


if __name__ == "__main__":
    main()
