# Two entry points (see README): `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test check bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/twin run --out out/default

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q

check: $(STAMP)
	$(BIN)/twin check scenarios/*.yaml

bench: $(STAMP)
	$(BIN)/python bench/twin_speed.py
	$(BIN)/python bench/scheduler.py

clean:
	rm -rf $(VENV) out
