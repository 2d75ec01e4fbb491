# The two set-up commands of the README:
#   make demo   install, then generate images from a prompt with the shipped model
#   make test   install with test extras, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q -c constraints.txt
PROMPT ?= a large red circle in the center
OUT ?= out

.PHONY: install install-test demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(PIP) torch==2.13.0
	$(PIP) -e .

install-test: install
	$(PIP) -e ".[test,serve]"
	PYTHON=$(BIN)/python bash scripts/install_browser.sh

demo: install
	$(BIN)/unclip data build shapes --out $(OUT)/shapes --size 32 --count 512
	$(BIN)/unclip data preview $(OUT)/shapes --out $(OUT)/shapes-preview.png

test: install-test
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(OUT) build src/*.egg-info
