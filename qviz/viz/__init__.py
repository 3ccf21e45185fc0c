"""Plotly figure builders: pure functions, data in, `go.Figure` out.

One submodule per concept; everything public is re-exported here, so notebooks write `viz.weight_histogram(...)`.
"""

from .awq import *  # noqa: F401,F403
from .gptq import *  # noqa: F401,F403
from .gpu import *  # noqa: F401,F403
from .model import *  # noqa: F401,F403
from .numbers import *  # noqa: F401,F403
from .packing import *  # noqa: F401,F403
from .quantization import *  # noqa: F401,F403
