# The two commands a new user needs: `make demo` and `make test`.
# Each creates the virtual environment with the pinned dependencies on first use.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= out

.PHONY: demo test bench venv models models-quick clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (edgecloud needs Python 3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all]'
	$(PY) -m proto.build
	@touch $@

venv: $(STAMP)

## The main job: broker, cloud, fleet manager and three edge daemons as processes; 1000 queries,
## a signed rollout midway, a cloud crash and restart; report + plots under $(OUT)/demo.
demo: $(STAMP)
	$(PY) -m demo --out $(OUT)/demo

## Every benchmark, one after the other; writes benchmarks/RESULTS.md (about half an hour).
bench: $(STAMP)
	$(PY) benchmarks/run_all.py

## The test suite.
test: $(STAMP)
	$(PY) -m pytest -q

## Rebuild the demo bundles from scratch (estimated 85 minutes on a 2-core CPU: teacher 2 stages, labels, student).
models: $(STAMP)
	$(PY) -m shared.cli models build --out models

## Tiny low-accuracy bundles, for trying the pipeline (a few minutes).
models-quick: $(STAMP)
	$(PY) -m shared.cli models build --quick --out $(OUT)/models-quick

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
