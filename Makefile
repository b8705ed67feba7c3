# Two commands from a fresh clone: `make sweep` and `make test`. Each creates .venv on first
# use (Python 3.11) and installs tunesmith with its dependencies; nothing else is downloaded.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
SWEEP_NAME ?= digits-$(shell date +%Y%m%d-%H%M%S)

.PHONY: setup sweep test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

sweep: $(STAMP)
	$(VENV)/bin/tunesmith run examples/digits.yaml --name $(SWEEP_NAME)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(VENV)/bin/python bench/overhead.py
	$(VENV)/bin/python bench/writer_cost.py
	$(VENV)/bin/python bench/smith_time.py

clean:
	rm -rf $(VENV) results
