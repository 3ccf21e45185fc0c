import pytest
import torch
from figure_checks import assert_readable

from qviz.exercises import nb03
from qviz.quant import QuantSpec, fake_quantize, sqnr_db
from qviz.stats import ChannelStats, layer_error
from qviz.viz import model as viz
from qviz.widgets.model import LayerExplorer


@pytest.fixture(scope="module")
def layer():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(48, 128, generator=gen) * 0.05
    mean_abs = torch.rand(128, generator=gen) + 0.1
    mean_abs[17] = 40.0  # a salient input channel
    return w, mean_abs


def test_layer_error_weighting(layer):
    w, mean_abs = layer
    spec = QuantSpec(bits=4, group_size=32)
    uniform = layer_error(w, torch.ones(128), spec)
    assert uniform["weighted_sqnr_db"] == pytest.approx(uniform["weight_sqnr_db"], rel=1e-6)
    assert uniform["weight_sqnr_db"] == pytest.approx(sqnr_db(w, fake_quantize(w, spec)))
    # large weights in column 16 coarsen the grid of group 0, where the salient input channel 17 also lives:
    # column 17's small weights get large relative errors, and those are multiplied by the largest activations
    w2 = w.clone()
    w2[:, 16] *= 30
    e = layer_error(w2, mean_abs, spec)
    assert e["column_error"].shape == (128,)
    assert e["column_error"][:32].mean() > 10 * e["column_error"][32:].mean()
    assert e["weighted_sqnr_db"] < e["weight_sqnr_db"] - 10


def test_layer_explorer_updates_in_place(layer):
    w, mean_abs = layer
    weights = {f"layers.{i}.mlp.down_proj": w * (i + 1) for i in range(3)}
    stats = {k: ChannelStats(mean_abs, mean_abs * 3, 100) for k in weights}
    ex = LayerExplorer(weights, stats, title="toy")
    fig = ex.fig
    ex.set(layer=2, bits=3, group=32)
    assert (
        ex.fig is fig
        and "layers.2.mlp.down_proj" in fig.layout.title.text
        and "INT3" in fig.layout.title.text
    )
    assert len(fig.data[0].y) == 128
    low = ex.state["weight_sqnr_db"]
    ex.set(bits=8)
    assert ex.state["weight_sqnr_db"] > low + 20
    ex.weights["layers.2.mlp.down_proj"] = torch.randn(8, 96)
    ex.stats["layers.2.mlp.down_proj"] = ChannelStats(torch.ones(96), torch.ones(96), 1)
    ex.set(group=64)
    assert "does not divide" in ex.summary.value


@pytest.mark.parametrize(
    "build",
    [
        lambda w, m: viz.layer_heatmap(
            [dict(layer=0, name="a", v=2.0), dict(layer=1, name="a", v=3.0)], "v", title="t", colorbar="ratio"
        ),
        lambda w, m: viz.channel_magnitudes(m, w, name="toy"),
        lambda w, m: viz.scale_heatmap(w, QuantSpec(bits=4, group_size=32), name="toy"),
        lambda w, m: viz.per_layer_lines({"RTN": [1.0, 2.0]}, title="t", yaxis="error"),
        lambda w, m: viz.metric_vs_bits(
            [dict(bits=4, granularity="g64", ppl=30.0), dict(bits=8, granularity="g64", ppl=20.0)],
            metric="ppl",
            reference=19.0,
            title="t",
            yaxis="perplexity",
        ),
    ],
    ids=["layer_heatmap", "channel_magnitudes", "scale_heatmap", "per_layer_lines", "metric_vs_bits"],
)
def test_figures_are_labelled(layer, build):
    assert_readable(build(*layer))


def test_channel_magnitudes_marks_salient(layer):
    w, mean_abs = layer
    d = viz.channel_magnitudes_data(mean_abs, w, salient=0.01)
    assert list(d["salient"]) == [17]


def test_nb03_checks(capsys):
    stats = {
        f"layers.{i}.mlp.down_proj": ChannelStats(torch.tensor([1.0, 1.0, float(i + 2)]), torch.ones(3), 1)
        for i in range(4)
    }
    assert nb03.check_worst_layer(stats, "mlp.down_proj", 3)
    assert not nb03.check_worst_layer(stats, "mlp.down_proj", 1)
    assert not nb03.check_worst_layer(stats, "mlp.down_proj", 9)
    assert "layers run from 0 to 3" in capsys.readouterr().out.splitlines()[-1]
    assert nb03.check_linear_bytes(1_000_000, 4, 1_000_000 * (4 + 20 / 64) / 8e6)
    assert not nb03.check_linear_bytes(1_000_000, 4, 0.5)


def test_metric_vs_bits_reference_stays_at_its_value_on_a_log_axis():
    """The reference line is data at y = reference: an add_hline annotation would sit at 10^reference on a
    log axis and stretch the autorange to 1e16 (seen in notebook 04)."""
    results = [dict(bits=4, granularity="g128", ppl=24.6), dict(bits=8, granularity="channel", ppl=14.9)]
    fig = viz.metric_vs_bits(results, metric="ppl", reference=14.86, log=True, title="t", yaxis="perplexity")
    assert fig.layout.yaxis.type == "log"
    assert not fig.layout.annotations and not fig.layout.shapes
    ref = [t for t in fig.data if t.name == "unquantized reference"]
    assert len(ref) == 1 and list(ref[0].y) == [14.86, 14.86] and list(ref[0].x) == [4, 8]
    assert max(max(t.y) for t in fig.data) == pytest.approx(24.6)
