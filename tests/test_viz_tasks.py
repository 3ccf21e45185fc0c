"""Notebook 10's pictures: the KL tail, accuracy changes with intervals, the live loss curve, the coloured passage,
and the "your use case" widget on the real model."""

import pytest
from figure_checks import assert_readable

from qviz import rtn
from qviz.quant import QuantSpec
from qviz.tasks import TaskScore, paired_change
from qviz.viz import tasks as viz


def test_the_kl_tail_is_the_fraction_of_tokens_at_or_above_each_value():
    fig = viz.kl_tail_figure({"a": [0.3, 0.1, 0.2, 0.4], "b": [0.25] * 4})
    assert_readable(fig)
    assert list(fig.data[0].x) == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert list(fig.data[0].y) == [1.0, 0.75, 0.5, 0.25]
    assert "mean 0.250" in fig.data[0].name and "mean 0.250" in fig.data[1].name  # one mean, two tails


def test_task_changes_are_the_paired_changes_in_points():
    f = TaskScore("cloze", (True, True, False, True), 0.25)
    q = TaskScore("cloze", (True, False, False, False), 0.25)
    fig = viz.task_change_figure({"float": {"cloze": f}, "INT3": {"cloze": q}}, "float")
    assert_readable(fig)
    change, half = paired_change(f, q)
    assert fig.data[0].y[0] == pytest.approx(100 * change) and fig.data[0].error_y.array[0] == pytest.approx(
        100 * half
    )


def test_the_loss_curve_grows_one_point_per_step():
    fig = viz.loss_figure()
    assert_readable(fig)
    on_step = viz.loss_appender(fig)
    for step, loss in enumerate([1.0, 0.8, 0.7]):
        on_step(step, loss)
    assert list(fig.data[0].x) == [1, 2, 3] and list(fig.data[0].y) == [1.0, 0.8, 0.7]


def test_token_colours_follow_the_sign_and_text_is_escaped():
    out = viz.token_delta_html(["<b>", " ok", "\n"], [-2.0, 0.0, 1.0], [True, False, False])
    assert "&lt;b&gt;" in out and "<b>" not in out.split("<div")[1]
    assert (
        "rgba(214,39,40,1.00)" in out and "text-decoration:underline" in out
    )  # less likely: full red, flipped
    assert "rgba(31,119,180,0.50)" in out  # more likely by 1 nat: half blue


@pytest.mark.slow
def test_the_use_case_widget_compares_a_quantized_model_with_the_float_one(smollm2):
    from qviz.widgets.tasks import UseCase

    reference, tok = smollm2
    import copy

    model = copy.deepcopy(reference)
    rtn.quantize_model(model, QuantSpec(bits=3, group_size=64), progress=False)
    widget = UseCase(
        {"RTN INT3": model}, reference, tok, "The plays of Shakespeare were first printed", new_tokens=5
    )
    view = widget.views["RTN INT3"]
    assert len(view.tokens) == len(
        tok("The plays of Shakespeare were first printed", add_special_tokens=False)["input_ids"]
    )
    assert min(view.kl) >= 0 and max(view.kl) > 0.01  # INT3 changes the predictions
    assert widget.tokens.value.count("<span title") == len(view.tokens)
    assert "float (reference)" in widget.table.value and "RTN INT3" in widget.table.value
    assert list(widget.fig.data[0].y)[0] == 1.0
    assert f"{sum(view.flipped)} top-1 flips" in widget.message.value
    widget.text.value = "   "
    widget.compare()
    assert "non-empty string" in widget.message.value  # a clear message, the last views kept
    widget.show()
