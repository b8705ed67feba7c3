# Two commands from a fresh clone: `make sweep` and `make test`. Each creates .venv on first
# use (Python 3.11). `make sweep` installs tunesmith and what it runs with, nothing more;
# `make test` adds the test extras and Debian's headless Chromium (the report page's test).
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
SUM := $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
STAMP := $(VENV)/.installed-$(SUM)
TEST_STAMP := $(VENV)/.installed-test-$(SUM)
PIP := $(VENV)/bin/python -m pip install -q --disable-pip-version-check
SWEEP_NAME ?= digits-$(shell date +%Y%m%d-%H%M%S)

.PHONY: setup setup-test browser sweep test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(PIP) -e .
	rm -f $(VENV)/.installed-[0-9]*
	touch $@

setup-test: $(TEST_STAMP) browser

$(TEST_STAMP): $(STAMP)
	$(PIP) -e '.[test]'
	rm -f $(VENV)/.installed-test-*
	touch $@

# The report page is tested in a real browser: Debian's headless Chromium, installed once.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  apt-get install -y -q chromium >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null) || \
	  (echo "make: Debian's chromium could not be installed (it needs root and apt); the report page's test needs it" >&2; exit 1)

sweep: $(STAMP)
	$(VENV)/bin/tunesmith run examples/digits.yaml --name $(SWEEP_NAME)

# Two test files at a time (with one, the 2 cores sat a third of the time idle); then,
# alone, the tests that measure seconds or race a signal (marked serial).
test: setup-test
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile -m "not serial"
	$(VENV)/bin/python -m pytest -q -m serial

test-fast: $(TEST_STAMP)
	$(VENV)/bin/python -m pytest -q -m "not slow"

bench: $(TEST_STAMP)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -e '.[bench]'
	$(VENV)/bin/python bench/overhead.py
	$(VENV)/bin/python bench/writer_cost.py
	$(VENV)/bin/python bench/smith_time.py

clean:
	rm -rf $(VENV) results
