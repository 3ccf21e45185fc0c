"""The peer's half of bench/peer_awq_llmcompressor.py: llm-compressor's AWQ oneshot on a local float model.

Runs in llm-compressor's own virtual environment and imports only torch, transformers, datasets,
compressed_tensors and llmcompressor (never qviz). Reads the calibration windows that the qviz side saved and
runs llm-compressor 0.14's AWQ recipe: `AWQModifier` (the smoothing transform: scale search and folding; the
mappings are inferred from the model class, for Llama input_layernorm -> q,k,v; v_proj -> o_proj when shapes
match; post_attention_layernorm -> gate,up; up_proj -> down_proj) followed by a `QuantizationModifier` with
INT-b asymmetric group-g weights (W4A16_ASYM with the group size replaced). Saves to one .pt file:

- "linears": for every quantized linear its dequantized weight Q(W·s) (computed here with compressed-tensors'
  own `forward_quantize`, because after oneshot `.weight` still holds the float smoothed W·s and the
  quantization happens in the forward), its weight_scale and weight_zero_point;
- "params": every other parameter of the decoder layers (the norms, into which AWQ folded 1/s), so that the
  qviz side can rebuild the peer's whole model in its own copy of the float model;
- the timing of the oneshot call, the versions and the options the peer really ran with.

    python bench/peer_llmcompressor_awq_side.py --model DIR --windows windows.pt --out peer.pt --group-size 64
"""

from __future__ import annotations

import argparse

import torch
from _peer_side import load, parser, timed_oneshot, versions


def duo_scaling(text: str):
    if text not in ("true", "false", "both"):
        raise argparse.ArgumentTypeError(f"--duo-scaling must be true, false or both, got {text!r}")
    return {"true": True, "false": False}.get(text, text)


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--duo-scaling", type=duo_scaling, default=True, help="true (default), false, both")
    ap.add_argument("--n-grid", type=int, default=20)
    ap.add_argument("--observer", default=None, help="weight observer; default: the library's (minmax)")
    args = ap.parse_args()
    model, dataset, calib = load(args)

    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme, forward_quantize
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier
    from llmcompressor.pipelines.cache import IntermediatesCache

    pinned = not torch.accelerator.is_available()
    if pinned:
        # llm-compressor 0.14's AWQ pins its cached calibration inputs in memory before each grid search, a
        # host-to-accelerator transfer hint; without an accelerator torch refuses ("Cannot access accelerator
        # device when none is available"). Pinning changes no value, so on a CPU-only machine it is skipped.
        IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None

    before = {name: p.detach().clone() for name, p in model.named_parameters() if ".layers." in name}
    weights = QuantizationArgs(
        num_bits=args.bits,
        type="int",
        symmetric=False,
        strategy="group",
        group_size=args.group_size,
        **({"observer": args.observer} if args.observer else {}),
    )
    recipe = [
        AWQModifier(duo_scaling=args.duo_scaling, n_grid=args.n_grid),  # mappings: inferred from the model
        QuantizationModifier(
            config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights)},
            ignore=["lm_head"],
        ),
    ]
    seconds = timed_oneshot(model, dataset, calib, recipe)

    linears, observers = {}, set()
    with torch.no_grad():
        for name, module in model.named_modules():
            if hasattr(module, "weight_scale"):
                scheme = module.quantization_scheme.weights
                observers.add(str(scheme.observer))
                linears[name] = {
                    "weight": forward_quantize(module, module.weight, "weight", scheme).float().clone(),
                    "scale": module.weight_scale.detach().float().clone(),
                    "zero_point": module.weight_zero_point.detach().float().clone(),
                }
    params = {
        name: p.detach().float().clone()
        for name, p in model.named_parameters()
        if ".layers." in name and name.rsplit(".", 1)[0] not in linears
    }
    awq = recipe[0]
    torch.save(
        {
            "seconds": seconds,
            "linears": linears,
            "params": params,
            "params_changed": sorted(n for n, p in params.items() if not torch.equal(p, before[n])),
            "versions": versions(),
            "threads": torch.get_num_threads(),
            "pin_memory_skipped": pinned,
            "options": {
                "duo_scaling": awq.duo_scaling,
                "n_grid": awq.n_grid,
                "observer": sorted(observers),
                "mappings": [(m.smooth_layer, list(m.balance_layers)) for m in awq.mappings or []],
            },
        },
        args.out,
    )
    print(f"peer: {len(linears)} linears quantized in {seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main()
