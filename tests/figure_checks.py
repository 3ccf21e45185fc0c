"""What every qviz figure must satisfy, checked by the viz and widget tests (not a test module).

A learner reads a figure before any caption: it needs a title and a title on every axis it shows; and a bar
drawn on a log axis starts at an arbitrary floor, so its length exaggerates ratios (0.38x can look like 20x):
bars go on linear axes, points or lines on log ones.
"""


def _axis_of(trace, letter: str) -> str:
    """The layout key of the axis a trace is drawn on: 'xaxis', 'yaxis2', ..."""
    ref = getattr(trace, f"{letter}axis", None) or letter
    return f"{letter}axis{ref[1:]}"


def assert_readable(fig) -> None:
    layout = fig.to_plotly_json()["layout"]
    assert fig.layout.title.text, "the figure has no title"
    axes = [  # a shared axis shows its ticks and title once, on the last subplot: the others hide them
        key for key in layout if key.startswith(("xaxis", "yaxis"))
        and layout[key].get("visible", True) and layout[key].get("showticklabels", True)
    ]  # fmt: skip
    used = {_axis_of(t, letter) for t in fig.data for letter in "xy"}
    for key in axes:
        if key in used or key in ("xaxis", "yaxis"):
            assert layout[key].get("title", {}).get("text"), f"{key} has no title"
    for trace in fig.data:
        if trace.type == "bar":
            value_axis = _axis_of(trace, "y" if trace.orientation != "h" else "x")
            assert layout.get(value_axis, {}).get("type") != "log", (
                f"bars {trace.name!r} on a log axis ({value_axis})"
            )
