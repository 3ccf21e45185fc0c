"""Hooks the tutorial's JupyterLab server runs (configured by scripts/jupyter/jupyter_server_config.py, which
scripts/setup.sh installs into the venv). Not used by the library itself."""

from __future__ import annotations

__all__ = ["keep_committed_metadata"]

COMMITTED_LANGUAGE_INFO = {"name": "python"}  # what the repository's notebooks hold


def keep_committed_metadata(model: dict, **kwargs) -> None:
    """Save notebooks with the metadata the repository holds: JupyterLab rewrites `language_info` from the kernel
    (Python version included) as soon as a notebook opens, which would make every opened notebook a local change
    and a `git pull` conflict. The learner's own edits and outputs are saved as usual."""
    if model.get("type") == "notebook":
        model["content"].get("metadata", {})["language_info"] = dict(COMMITTED_LANGUAGE_INFO)
