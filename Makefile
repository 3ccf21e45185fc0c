# Two commands for a fresh clone (see README.md):
#   make lab    set everything up, then open the tutorial in JupyterLab
#   make test   set everything up, then run ruff and the whole test suite (notebooks and browser included)
VENV := .venv
BIN := $(VENV)/bin
# The kernel named python3 must be this venv's Python, even where the user has their own python3 kernelspec.
export JUPYTER_PATH := $(CURDIR)/$(VENV)/share/jupyter
# JupyterLab refuses to run as root unless told (containers, CI).
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: setup lab test lint

setup:
	./scripts/setup.sh

# default_url: the browser, and the URL JupyterLab prints, open the first notebook
lab: setup
	$(BIN)/jupyter lab $(ALLOW_ROOT) --LabApp.default_url=/lab/tree/notebooks/01_numbers.ipynb

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	QVIZ_FAST=1 $(BIN)/pytest

.PHONY: slides app

# reveal.js slides of every notebook in build/slides/, slide types taken from the headings (scripts/slides.py)
slides: setup
	$(BIN)/python scripts/slides.py

# the explorers as a standalone page served by Voilà, no code shown: open the URL it prints; Ctrl-C stops it
app: setup
	$(BIN)/voila app/qviz_app.ipynb
