# Every target sets up .venv itself, so each works on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo tools test lint typecheck bench bench-quick clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/rdma-shared-dp demo

# External tools some tests use (promtool, kubectl, hadolint, kubernetes-validate); quick when present.
tools: $(STAMP)
	bash .ci/install-tools.sh

test: tools
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy --strict common/ supervisor/

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# CI smoke of the scale benchmark (1 and 8 resources, one run, no results file): it fails only
# when the benchmark itself breaks; targets are printed, not enforced.
bench-quick: $(STAMP)
	$(BIN)/python benchmarks/bench_scale.py --quick --output ''

clean:
	rm -rf $(VENV) build *.egg-info
