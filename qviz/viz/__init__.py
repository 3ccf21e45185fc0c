"""Plotly figure builders: pure functions, data in, `go.Figure` out. One submodule per concept; import from it,
e.g. `from qviz.viz import gptq as gptq_viz` (this package re-exports nothing).

numbers (formats and their bit layouts), quantization (grids, errors, granularity), model (a real model's
weights and activations), gptq, awq, packing (bit layouts of packed words), gpu (memory bandwidth), activations,
formats, tasks, memory (will it fit), choose (every result on one size-against-error chart).
"""
