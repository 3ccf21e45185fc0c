"""qviz: see and touch LLM weight quantization.

The library is layered; each module imports only from modules above it in this list:
formats, quant, data, models, calib, rtn/gptq/awq, eval, pack, qlinear, export, viz, widgets.
Plotly and ipywidgets are imported only by `qviz.viz` and `qviz.widgets`.
"""

__version__ = "0.2.0"
