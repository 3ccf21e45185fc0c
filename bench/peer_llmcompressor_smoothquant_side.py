"""The peer's half of bench/peer_smoothquant_llmcompressor.py: llm-compressor's SmoothQuant + W8A8 (INT8) oneshot
on a local float model, and its own quantized forward on the evaluation windows.

Runs in llm-compressor's own virtual environment and imports only torch, transformers, datasets,
compressed_tensors and llmcompressor (never qviz). Reads the calibration windows and evaluation ids that the qviz
side saved and runs llm-compressor 0.14's SmoothQuant example recipe: `SmoothQuantModifier(smoothing_strength=α)`
(mappings inferred from the model class: for Llama input_layernorm -> q,k,v and post_attention_layernorm ->
gate,up) followed by a `QuantizationModifier` with the "W8A8" preset (INT8 weights per output channel, static,
symmetric; INT8 input activations per token, dynamic, symmetric). Saves to one .pt file:

- "logits": the quantized model's float32 logits on every evaluation row (its own runtime: compressed-tensors
  fake-quantizes the weights and every linear's input in the forward), positions 0 .. L-2 (each predicts the next);
- "linears": for every quantized linear its dequantized weight Q(W·s) (compressed-tensors' `forward_quantize`)
  and weight_scale; "params": every other decoder-layer parameter (the norms SmoothQuant divided by s);
- the timing of the oneshot call, the versions and the mappings it used.

    python bench/peer_llmcompressor_smoothquant_side.py --model DIR --windows windows.pt --out peer.pt --alpha 0.5
"""

from __future__ import annotations

import torch
from _peer_side import load, parser, timed_oneshot, versions


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant's migration strength")
    args = ap.parse_args()
    model, dataset, calib = load(args)
    eval_ids = torch.load(args.windows)["eval"]  # (n, L): BOS + window, as qviz.eval.evaluate reads them

    from compressed_tensors.quantization import forward_quantize
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

    recipe = [
        SmoothQuantModifier(smoothing_strength=args.alpha),
        QuantizationModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"]),
    ]
    seconds = timed_oneshot(model, dataset, calib, recipe)

    model.eval()
    with torch.no_grad():
        logits = [model(input_ids=row[None]).logits[0, :-1].float().clone() for row in eval_ids]
        linears = {}
        for name, module in model.named_modules():
            if hasattr(module, "weight_scale"):
                scheme = module.quantization_scheme.weights
                linears[name] = {
                    "weight": forward_quantize(module, module.weight, "weight", scheme).float().clone(),
                    "scale": module.weight_scale.detach().float().clone(),
                }
    params = {
        name: p.detach().float().clone()
        for name, p in model.named_parameters()
        if ".layers." in name and name.rsplit(".", 1)[0] not in linears
    }
    torch.save(
        {
            "seconds": seconds,
            "logits": logits,
            "linears": linears,
            "params": params,
            "versions": versions(),
            "threads": torch.get_num_threads(),
            "smoothed": sorted({m.smooth_name.split(".")[-1] for m in recipe[0].resolved_mappings_ or []}),
        },
        args.out,
    )
    print(f"peer: {len(linears)} linears quantized in {seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main()
