# The two commands a new user needs: `make demo` and `make test`.
# Each creates the virtual environment with the pinned dependencies on first use.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STUBS := proto/edgecloud/v1/reasoner_pb2.py
OUT ?= out

.PHONY: demo test lint test-edge bench venv llama-server models models-smarthome models-quick clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (edgecloud needs Python 3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all]'
	$(PY) -m edgecloud.proto.build
	@touch $@

venv: $(STAMP) $(STUBS)

## llama.cpp's OpenAI-compatible server (llama-cpp-python, built from source with cmake: about
## 5 minutes on 2 cores the first time, pip's wheel cache after), in a venv of its own so its
## dependencies never meet ours: the serving engine the OpenAI backend's tests run against.
LLAMA_VENV ?= .venv-llama
LLAMA_STAMP := $(LLAMA_VENV)/.installed
LLAMA_CPP_PYTHON := llama-cpp-python[server]==0.3.36
$(LLAMA_STAMP):
	@command -v cmake >/dev/null || { echo "error: cmake is needed to build llama-cpp-python (apt-get install cmake)"; exit 1; }
	$(PYTHON) -m venv $(LLAMA_VENV)
	$(LLAMA_VENV)/bin/python -m pip install --quiet --upgrade pip
	@echo "building $(LLAMA_CPP_PYTHON) (minutes on the first build)"
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(LLAMA_VENV)/bin/python -m pip install --quiet '$(LLAMA_CPP_PYTHON)'
	@touch $@

llama-server: $(LLAMA_STAMP)

## The gRPC stubs, generated again whenever the .proto changes.
$(STUBS): proto/edgecloud/v1/reasoner.proto $(STAMP)
	$(PY) -m edgecloud.proto.build

## The main job: broker, cloud, fleet manager and three edge daemons as processes; 1000 queries,
## a signed rollout midway, a cloud crash and restart; report + plots under $(OUT)/demo.
## TASK=smarthome runs the smart-home commands on the bundles in models/smarthome instead.
TASK ?= arithmetic
demo: $(STAMP) $(STUBS)
	$(PY) -m edgecloud.demo --task $(TASK) --out $(OUT)/demo$(if $(filter-out arithmetic,$(TASK)),-$(TASK))

## Every benchmark, one after the other; writes benchmarks/RESULTS.md (about half an hour).
bench: $(STAMP) $(STUBS)
	$(PY) benchmarks/run_all.py

## The test suite, spread over TEST_WORKERS processes (pytest-xdist; 0 runs it in one process). A few
## model-training tests take minutes: an idle worker steals queued tests from a busy one (worksteal; 728 s
## against 818-829 s with xdist's default load scheduling, 2049 tests, 2 cores, alone, 2026-12-07).
TEST_WORKERS ?= 2
test: $(STAMP) $(STUBS) $(LLAMA_STAMP)
	EDGECLOUD_REQUIRE_LLAMA=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

## ruff: lint and formatting (CI runs it before the tests).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

## The edge and shared tests in a venv with only the edge's dependencies (no torch, no transformers):
## an import of the cloud's model backend creeping into the edge fails here. Tests that need a real
## Reasoner skip (they run in `make test`).
EDGE_VENV ?= .venv-edge
test-edge:
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found"; exit 1; }
	test -x $(EDGE_VENV)/bin/python || $(PYTHON) -m venv $(EDGE_VENV)
	$(EDGE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(EDGE_VENV)/bin/python -m pip install --quiet -e '.[edge,dev]'
	$(EDGE_VENV)/bin/python -m edgecloud.proto.build
	! $(EDGE_VENV)/bin/python -c "import torch" 2>/dev/null || { echo "error: torch is installed in $(EDGE_VENV)"; exit 1; }
	$(EDGE_VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal -p no:cacheprovider tests/edge tests/shared

## Rebuild the demo bundles in models/ from scratch, as they ship: the base pair (estimated 85 minutes on a
## 2-core CPU: teacher 2 stages, labels, student), then one learning-loop turn through the real edge and
## cloud (about an hour: 20,000 queries collected, `models improve`, 2,000 fresh queries before and after).
## The shipped student is that turn's output: the base and the reasoner it trained, as one bundle.
models: $(STAMP) $(STUBS)
	$(PY) -m edgecloud models build --out $(OUT)/models-base
	$(PY) benchmarks/closed_loop.py --models $(OUT)/models-base --keep $(OUT)/models-loop --out $(OUT)/models-loop
	rm -rf models/cloud-teacher models/edge-student models/student-reference
	cp -r $(OUT)/models-base/cloud-teacher models/
	cp -r $(OUT)/models-loop/improved/edge-student $(OUT)/models-loop/improved/student-reference models/

## The smart-home bundles in models/smarthome from their dataset: 100,000 training commands and a 5,000-step
## teacher (2,500 steps on 20,000 rows leave binding errors on multi-command queries; docs/models.md). About
## 85 minutes on a 2-core CPU, from its stages measured alone on 2026-12-07 (not end to end): teacher 30,
## labels about 37 (45 queries/s), student 14, export, int8 check and calibration 2.
models-smarthome: $(STAMP)
	$(PY) -m edgecloud data smarthome --train 100000 --out $(OUT)/data/smarthome
	$(PY) -m edgecloud models build --data $(OUT)/data/smarthome --name smarthome --teacher-steps 5000 --out models/smarthome

## Tiny low-accuracy bundles, for trying the pipeline (a few minutes).
models-quick: $(STAMP)
	$(PY) -m edgecloud models build --quick --out $(OUT)/models-quick

clean:
	rm -rf $(VENV) $(EDGE_VENV) $(OUT) .pytest_cache
