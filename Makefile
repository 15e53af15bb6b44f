# Every target creates the virtualenv first when it is missing (or pyproject.toml changed).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: quickstart test test-fast install clean

# The main job: a real sweep on scikit-learn's digits, embedded Ray, results under ./runs/quickstart.
quickstart: $(STAMP)
	$(BIN)/sweepctl run sweeps/quickstart.yaml

# The whole test suite (real Ray, real data formats); ~5-10 minutes on 2 cores.
test: $(STAMP)
	$(BIN)/python -m pytest

# Only the tests that start no Ray (seconds).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

clean:
	rm -rf $(VENV) runs .pytest_cache
