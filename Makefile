# Two entry points: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= .demo/models
SAMPLES_DIR ?= .demo/samples
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: run test venv dev demo lint proto clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install whenever the project's metadata changes.
$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.run-installed

venv: $(VENV)/.run-installed

dev: $(VENV)/.dev-installed

demo: $(VENV)/.run-installed
	$(BIN)/edge-agent demo-models $(DEMO_DIR) --samples $(SAMPLES_DIR)

run: demo
	$(BIN)/edge-agent serve --models-dir $(DEMO_DIR)

test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.dev-installed
	$(BIN)/python -m ruff check edge_agent engines tests bench

# The benchmark suite (see BENCHMARKS.md): make bench BENCH_ARGS='--preset full'
bench: $(VENV)/.dev-installed
	$(BIN)/python -m bench $(BENCH_ARGS)

# Regenerates the committed stubs after an edit of proto/edge-agent.proto.
proto: $(VENV)/.dev-installed
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=proto --grpc_python_out=proto --pyi_out=proto \
		proto/edge-agent.proto

clean:
	rm -rf $(VENV) .demo .pytest_cache build *.egg-info
