"""Calibration: what each decoder layer (and each linear in it) sees on real text, and the layer-by-layer
driver that RTN, GPTQ and AWQ share. One module per job:

- `qviz.calib.hessian`: H = 2XXᵀ/n of a linear's inputs, accumulated batch by batch (`Hessian`), shared by
  linears that read the same tensor (`HessianSet`);
- `qviz.calib.capture`: run token windows up to the first decoder layer (`capture_layer_inputs`), run a layer
  (`run_layer`), and hand each linear's input to a function (`capture_linear_inputs`, `collect_hessians`,
  `linear_inputs`);
- `qviz.calib.driver`: quantize a model one decoder layer at a time, each layer calibrated on what the
  already-quantized layers before it produce (`quantize_layerwise`), and collect one `qviz.result.QuantResult`;
- `qviz.calib.sequential`: inside one layer, quantize its groups of linears in forward order, each on the
  inputs the already-quantized groups produce, in one pass of the layer (`quantize_sequential`, GPTQ's
  "true sequential");
- `qviz.calib.report`: the output error ‖WX − QX‖² from H alone, and one report row per linear.

Import names from their module (`from qviz.calib.hessian import Hessian`); this package re-exports nothing.
"""
