"""The JupyterLab settings scripts/setup.sh installs: a notebook opened and saved keeps the repository's metadata
(so `git pull` never conflicts on it), kernels keep their TCP warning to themselves, and the news pop-up and the
search for language servers are off."""

import json
from pathlib import Path

from traitlets.config import Config

CONFIG = Path(__file__).resolve().parents[1] / "scripts" / "jupyter"


def load_config(name: str = "jupyter_server_config.py") -> Config:
    c = Config()
    exec(compile((CONFIG / name).read_text(), name, "exec"), {"get_config": lambda: c})
    return c


def test_saving_keeps_the_committed_language_info():
    from traitlets.utils.importstring import import_item

    hook = import_item(load_config().FileContentsManager.pre_save_hook)
    committed = json.loads((CONFIG.parents[1] / "notebooks" / "01_numbers.ipynb").read_text())["metadata"]
    as_jupyterlab_writes = {
        "kernelspec": committed["kernelspec"],
        "language_info": {"name": "python", "version": "3.11.7", "mimetype": "text/x-python", "file_extension": ".py",
                          "codemirror_mode": {"name": "ipython", "version": 3}, "pygments_lexer": "ipython3"},
    }  # fmt: skip
    model = {"type": "notebook", "content": {"metadata": as_jupyterlab_writes, "cells": []}}
    hook(model=model, path="01_numbers.ipynb", contents_manager=None)
    assert model["content"]["metadata"] == committed
    other = {"type": "file", "content": "text"}
    hook(model=other, path="notes.txt", contents_manager=None)
    assert other == {"type": "file", "content": "text"}


def test_quiet_kernels_no_news_no_language_server_search():
    assert load_config("ipython_kernel_config.py").IPKernelApp.log_level == "ERROR"
    assert load_config().LanguageServerManager.autodetect is False
    notification = json.loads((CONFIG / "overrides.json").read_text())[
        "@jupyterlab/apputils-extension:notification"
    ]
    assert notification == {"fetchNews": "false", "checkForUpdates": False}
