"""ipywidgets explorers: each builds one FigureWidget once and updates it in place, and only draws: what it
shows is computed by the library module of its idea. One submodule per concept; import from it, e.g.
`from qviz.widgets.gptq import GPTQLayerExplorer` (this package re-exports nothing).
"""
