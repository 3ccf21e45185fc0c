"""The peer's half of bench/peer_gptq_llmcompressor.py: llm-compressor's GPTQ oneshot on a local float model.

Runs in llm-compressor's own virtual environment and imports only torch, transformers, datasets, compressed_tensors and
llmcompressor (never qviz). Reads the calibration windows that the qviz side saved, runs GPTQ W4A16 with the
requested spec, and saves the fake-quantized (dequantized) weights of every quantized linear, their scales
and the timing to one .pt file, which the qviz side loads into its own copy of the float model.

    python bench/peer_llmcompressor_side.py --model DIR --windows windows.pt --out peer.pt --group-size 64
"""

from __future__ import annotations

import torch
from _peer_side import load, parser, timed_oneshot, versions


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--damp", type=float, default=0.01)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument(
        "--actorder", choices=["default", "none"], default="none",
        help="default: GPTQModifier's own default (act-order 'static' in 0.14); none: act-order off",
    )  # fmt: skip
    args = ap.parse_args()
    model, dataset, calib = load(args)

    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor.modifiers.quantization import GPTQModifier

    weights = QuantizationArgs(
        num_bits=args.bits, type="int", symmetric=True, strategy="group", group_size=args.group_size
    )
    # act-order off must be said to the modifier too: its default ("static") would replace the scheme's None
    order = {} if args.actorder == "default" else {"actorder": None}
    if order:
        weights.actorder = None
    recipe = GPTQModifier(
        config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights)},
        ignore=["lm_head"],
        block_size=args.block_size,
        dampening_frac=args.damp,
        **order,
    )
    seconds = timed_oneshot(model, dataset, calib, recipe)

    # After oneshot the quantized linears hold their dequantized weights (GPTQ writes Q back into .weight)
    # and carry weight_scale / weight_zero_point; the qviz side checks the weights lie on that grid.
    state, orders = {}, set()
    for name, module in model.named_modules():
        if hasattr(module, "weight_scale"):
            orders.add(str(module.quantization_scheme.weights.actorder))
            state[name] = {
                "weight": module.weight.detach().float().clone(),
                "scale": module.weight_scale.detach().float().clone(),
            }
    torch.save(
        {
            "seconds": seconds,
            "linears": state,
            "versions": versions(),
            "threads": torch.get_num_threads(),
            "actorder": sorted(orders),  # what the peer really ran with
        },
        args.out,
    )
    print(f"peer: {len(state)} linears quantized in {seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main()
