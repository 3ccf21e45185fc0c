""" "Your use case": paste a text, and see how each quantized model reads it next to the float model: every token
coloured by its change in log-probability, the tail of the per-token KL, and each model's greedy continuation.
It only draws: `qviz.eval.token_view` and `qviz.eval.generate` compute, `qviz.viz.tasks` builds the pictures."""

from __future__ import annotations

import html

import ipywidgets as W
import plotly.graph_objects as go
from torch import nn

from qviz.eval import generate, kl_tail, token_view
from qviz.viz.tasks import kl_tail_figure, token_delta_html

__all__ = ["UseCase"]


class UseCase:
    """`UseCase(models, reference, tokenizer)` with models {label: quantized model}. Type or paste a passage (or a
    prompt) and press "compare"; the dropdown picks the model whose tokens are coloured."""

    def __init__(
        self,
        models: dict[str, nn.Module],
        reference: nn.Module,
        tokenizer,
        text: str = "",
        new_tokens: int = 20,
    ):
        if not models:
            raise ValueError("pass at least one quantized model: {label: model}")
        self.models, self.reference, self.tokenizer, self.new_tokens = (
            models,
            reference,
            tokenizer,
            new_tokens,
        )
        self.text = W.Textarea(value=text, placeholder="paste your own text or prompt here",
                               layout=W.Layout(width="100%", height="90px"))  # fmt: skip
        self.model = W.Dropdown(options=list(models), description="colour by")
        self.button = W.Button(description="compare", button_style="primary")
        self.message = W.HTML()
        self.tokens = W.HTML()
        self.fig = go.FigureWidget(
            kl_tail_figure({label: [1.0] for label in models}, "The tail of the per-token KL on your text")
        )
        self.table = W.HTML()
        self.views: dict = {}
        self.button.on_click(lambda _: self.compare())
        self.model.observe(lambda _: self._colour(), names="value")
        if text.strip():
            self.compare()

    def compare(self) -> None:
        """Score the text with every model (one pass each) and write the three views."""
        try:
            self.views = {
                label: token_view(m, self.reference, self.tokenizer, self.text.value)
                for label, m in self.models.items()
            }
        except ValueError as err:  # empty or too long: say what is allowed
            self.message.value = f"<b style='color:#b00'>{html.escape(str(err))}</b>"
            return
        new = kl_tail_figure({label: v.kl for label, v in self.views.items()}, self.fig.layout.title.text)
        with self.fig.batch_update():
            for trace, fresh in zip(self.fig.data, new.data, strict=True):
                trace.x, trace.y, trace.name = fresh.x, fresh.y, fresh.name
        self._colour()
        prompt = self.text.value
        rows = [("float (reference)", generate(self.reference, self.tokenizer, prompt, self.new_tokens))]
        rows += [
            (label, generate(m, self.tokenizer, prompt, self.new_tokens)) for label, m in self.models.items()
        ]
        tails = {label: kl_tail(v.kl, (0.5, 0.9, 0.99)) for label, v in self.views.items()}
        cells = "".join(
            f"<tr><td>{html.escape(label)}</td><td style='text-align:left'>{html.escape(text)!s}</td>"
            + (f"<td>{tails[label]['p50']:.3f} / {tails[label]['p90']:.3f} / {tails[label]['p99']:.3f}</td>" if label in tails else "<td>—</td>")
            + "</tr>"
            for label, text in rows
        )  # fmt: skip
        self.table.value = (
            f"<table><tr><th>model</th><th>greedy continuation ({self.new_tokens} tokens)</th>"
            f"<th>KL p50 / p90 / p99 (nats)</th></tr>{cells}</table>"
        )

    def _colour(self) -> None:
        view = self.views.get(self.model.value)
        if view is not None:
            self.tokens.value = token_delta_html(view.tokens, view.delta, view.flipped)
            self.message.value = (
                f"<b>{html.escape(self.model.value)}</b> against the float model on your {len(view.tokens)} tokens: "
                f"{sum(view.flipped)} top-1 flips, mean Δlog p {sum(view.delta) / len(view.delta):+.3f} nats, "
                f"mean KL {sum(view.kl) / len(view.kl):.3f} nats"
            )

    def show(self):
        return W.VBox(
            [self.text, W.HBox([self.button, self.model]), self.message, self.tokens, self.fig, self.table]
        )

    def _ipython_display_(self):
        from IPython.display import display

        display(self.show())
