# The two set-up commands of the README:
#   make demo   install, then generate images from a prompt with the shipped model
#   make test   install with test extras, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q -c constraints.txt
PROMPT ?= a Noto-style emoji of red apple, fruit, food
PROMPT2 ?= a Twemoji-style emoji of grinning face
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
	mkdir -p $(OUT)
	$(BIN)/unclip generate "$(PROMPT)" "$(PROMPT2)" -n 4 --seed 0 --out $(OUT)/demo.png

test: install-test
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(OUT) build src/*.egg-info
