# Two commands set everything up: `make repro` runs the pipeline, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Stage commands (`python -m pipeline.<stage>`) must find the venv's python, also under `dvc repro`.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install repro lint test test-fast test-portable bench study ui team-server golden params docs clean

install: $(STAMP)

# Exact versions from requirements.lock; the package itself is installed editable on top.
$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

repro: $(STAMP)
	$(BIN)/dvc repro

# ruff's linter and formatter (settings in pyproject.toml); `make test` runs this first.
lint: $(STAMP)
	$(BIN)/ruff check pipeline tests
	$(BIN)/ruff format --check pipeline tests

# Two pytest-xdist workers, each taking whole modules (their fixtures are set up once): on 2
# cores 1.4 to 1.5 times faster than one process (docs/guide/development.md). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# Every tier; the 20 slowest tests are listed at the end, so that the next slow one shows.
test: lint
	$(PYTEST) --durations=20

# The inner loop: unit and integration tests, no subprocess, server or real dvc (tier e2e).
test-fast: $(STAMP)
	$(PYTEST) -m "not e2e"

# The tests that compare numbers (marker numeric: golden outputs, export parity, determinism,
# cross-mode tolerances) with TensorFlow's kernels of another CPU: oneDNN off (ONEDNN_MODE=off,
# the default) or limited to AVX2 (ONEDNN_MODE=avx2). A test that holds on one CPU only fails here.
ONEDNN_MODE ?= off
ONEDNN_ENV_off := TF_ENABLE_ONEDNN_OPTS=0
ONEDNN_ENV_avx2 := ONEDNN_MAX_CPU_ISA=AVX2
test-portable: $(STAMP)
	$(if $(ONEDNN_ENV_$(ONEDNN_MODE)),,$(error ONEDNN_MODE must be off or avx2, got '$(ONEDNN_MODE)'))
	$(ONEDNN_ENV_$(ONEDNN_MODE)) $(PYTEST) -m numeric --durations=10

# The documentation site (mkdocs-material) -> site/: the config reference pages are rewritten
# from the schema first; --strict fails on a broken link, a missing page or a page not in the nav.
docs: $(STAMP)
	$(BIN)/python -m pipeline.tools.reference
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# Inference benchmarks of the pipeline's model (reproduced first if needed), then the HTTP
# service under load and a soak -> reports/bench.json; the training input pipelines ->
# reports/trainbench.json.
bench: $(STAMP)
	$(BIN)/dvc repro
	$(BIN)/python -m pipeline.tools.bench
	$(BIN)/python -m pipeline.tools.loadbench
	$(BIN)/python -m pipeline.tools.trainbench

# The real-data study (pipeline/experiments/study.py): every bundled UCR/UEA set x conv_attention, conv_gap,
# MiniRocket x seeds 1-3 as queued DVC experiments, then docs/results.md, .csv and _cd.png from
# the MLflow store. Interrupted, it picks up where it stopped: only runs the store lacks are queued.
study: $(STAMP)
	$(BIN)/python -m pipeline.tools.study queue
	$(BIN)/dvc queue start -j 1
	$(BIN)/python -m pipeline.tools.study wait
	$(BIN)/python -m pipeline.tools.compare --out docs/results

# MLflow's UI on mlflow.db; prints the address of each experiment's runs in the training view.
ui: $(STAMP)
	$(BIN)/python -m pipeline.tracking.ui --store $(CURDIR)/mlflow.db --port 5000

# A team's MLflow server: runs in PostgreSQL (DB=postgresql://USER:PASSWORD@HOST:PORT/DATABASE),
# artifacts in ARTIFACTS; see docs/guide/tracking.md.
ARTIFACTS ?= mlartifacts-team
PORT ?= 5000
team-server: $(STAMP)
	$(BIN)/python -m pipeline.tracking.team_server --db "$(DB)" --artifacts "$(ARTIFACTS)" --port $(PORT)

# Rewrites tests/golden/ (weights, inputs, ONNX outputs); commit the result and say why it changed.
# GOLDEN="--outputs-only" keeps the stored weights and inputs and stores today's outputs of them.
golden: $(STAMP)
	$(BIN)/python -m tests.golden_models --write $(GOLDEN)

# Rewrites params.yaml as the composition of conf/ defaults.
params: $(STAMP)
	$(BIN)/python -m pipeline.tools.params --write-params

clean:
	rm -rf $(VENV)
