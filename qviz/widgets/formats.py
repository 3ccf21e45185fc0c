"""The super-block explorer: pick a Q4_K tensor of a GGUF file and a super-block, see its fields and its weights
on their sub-block grids. It only draws: `qviz.viz.formats.superblock_data` decodes, `superblock_figure` builds
the figure once, and each change writes the new block's traces into it."""

from __future__ import annotations

import ipywidgets as W
import plotly.graph_objects as go

from qviz.gguf import GGUFTensor
from qviz.viz.formats import superblock_data, superblock_figure

__all__ = ["SuperBlockExplorer"]


class SuperBlockExplorer:
    """`SuperBlockExplorer(tensors)` with tensors {GGUF name: GGUFTensor} (e.g. `qviz.models.release_tensors`);
    only the Q4_K ones are offered. A dropdown picks the tensor, a slider the super-block."""

    def __init__(self, tensors: dict[str, GGUFTensor], name: str | None = None, block: int = 0):
        self.tensors = {k: t for k, t in tensors.items() if t.type == "Q4_K"}
        if not self.tensors:
            raise ValueError(
                "no Q4_K tensor to explore: pass a GGUF file's tensors (qviz.models.release_tensors)"
            )
        name = name or next(iter(self.tensors))
        self.tensor = W.Dropdown(options=list(self.tensors), value=name, description="tensor",
                                 layout=W.Layout(width="420px"))  # fmt: skip
        self.block = W.IntSlider(value=block, min=0, max=len(self.tensors[name].data) - 1, description="block",
                                 continuous_update=False, layout=W.Layout(width="420px"))  # fmt: skip
        self.summary = W.HTML()
        self.fig = go.FigureWidget(superblock_figure(superblock_data(self.tensors[name], block)))
        self.tensor.observe(self._tensor_changed, names="value")
        self.block.observe(self._update, names="value")
        self._update()

    def _tensor_changed(self, change) -> None:
        self.block.max = len(self.tensors[change["new"]].data) - 1
        self._update()

    def _update(self, change=None) -> None:
        data = superblock_data(self.tensors[self.tensor.value], self.block.value)
        self.state = data
        new = superblock_figure(data)
        with self.fig.batch_update():
            for trace, fresh in zip(self.fig.data, new.data):
                trace.x, trace.y = fresh.x, fresh.y
                if fresh.customdata is not None:
                    trace.customdata = fresh.customdata
            self.fig.layout.title.text = new.layout.title.text
        self.summary.value = (
            f"d = {data['d']:.3e}, dmin = {data['dmin']:.3e}; 6-bit scales {data['scales']}, mins {data['mins']}; "
            f"first codes {data['codes'][:8]}"
        )

    def set(self, name: str | None = None, block: int | None = None) -> None:
        """Change the controls from code, e.g. `explorer.set(block=5)`."""
        if name is not None:
            self.tensor.value = name
        if block is not None:
            self.block.value = block

    def show(self):
        return W.VBox([W.HBox([self.tensor, self.block]), self.summary, self.fig])

    def _ipython_display_(self):
        from IPython.display import display

        display(self.show())
