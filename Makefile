# Every target sets up .venv itself, so each works on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo tools test lint typecheck bench clean e2e-kubelet

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
	$(BIN)/pytest -q -m "not kubelet"

# The real-kubelet suite (docs/e2e-kubelet.md): builds kubelets and containerd 2 from Go modules
# once (cached by version), then runs upstream kubelets against the plugin. Needs root.
e2e-kubelet: $(STAMP)
	bash .ci/install-kubelet-e2e.sh
	RDMA_E2E_REQUIRE=1 $(BIN)/pytest -q -m kubelet tests/e2e/kubelet

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy --strict common/ supervisor/

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
