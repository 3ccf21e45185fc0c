"""ipywidgets explorers: each builds one FigureWidget once and updates it in place.

One submodule per concept; everything public is re-exported here.
"""

from .awq import *  # noqa: F401,F403
from .gptq import *  # noqa: F401,F403
from .model import *  # noqa: F401,F403
from .numbers import *  # noqa: F401,F403
from .quantization import *  # noqa: F401,F403
