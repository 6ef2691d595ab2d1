# Every target sets up .venv itself, so each works on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo tools test lint typecheck bench clean

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
	$(BIN)/mypy --strict common/ supervisor/ workers/

bench: $(STAMP)
	@rc=0; for b in benchmarks/bench_*.py; do echo "== $$b"; \
		RDMA_SHARED_DP_FIGURES=benchmarks/figures.json $(BIN)/python $$b || rc=1; done; \
		$(BIN)/python benchmarks/figures.py --render README.md; exit $$rc

clean:
	rm -rf $(VENV) build *.egg-info
