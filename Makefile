# Every target sets up .venv itself, so each works on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The runtime dependencies alone, exactly the image's (requirements.lock, hash-checked), and the
# `rdma-shared-dp` command built from this checkout with the locked build backend: all `make demo`
# needs (it runs the plugin from the checkout itself, so later edits show). $(STAMP) replaces the
# command with an editable install.
RUNTIME := $(VENV)/.runtime
LOCK := requirements.lock
PIP := $(BIN)/pip --disable-pip-version-check
# A Python 3.12 (the default image has Debian's 3.13): `make bench` also runs the scale benchmark
# with it, where the zygote makes its objects immortal (docs/worker.md), when this machine has it.
PY312 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12) python3.12)
VENV312 := .venv-py312

.PHONY: chart-files lock release demo tools test test-fast lint typecheck bench bench-quick clean image e2e-kubelet e2e-dra e2e-rdma

$(RUNTIME): $(LOCK)
	$(PY) -m venv $(VENV)
	$(PIP) install -q --require-hashes -r $(LOCK)
	$(PIP) install -q --no-deps --no-build-isolation .
	touch $(RUNTIME)

# Development and tests: the project itself (editable) and the test tools, on the locked versions.
$(STAMP): pyproject.toml $(RUNTIME)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

demo: $(RUNTIME)
	$(BIN)/python -m supervisor demo

# The lock file of the image's dependencies, hashes included (uv, from the test extras);
# tests/static/test_lock.py fails while it is stale.
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml requirements-build.in --universal --python-version 3.11 \
		--generate-hashes -q -o $(LOCK)

# External tools some tests use (promtool, kubectl, hadolint, kubernetes-validate, helm v4 and v3);
# quick when present (a cold helm build takes minutes, cached outside the repo).
tools: $(STAMP)
	bash .ci/install-tools.sh

test: tools
	$(BIN)/pytest -q -m "not kubelet and not dra and not rdma_vm"

# The real-kubelet suite (docs/e2e-kubelet.md): builds kubelets and containerd 2 from Go modules
# once (cached by version), then runs upstream kubelets against the plugin. Needs root.
e2e-kubelet: $(STAMP)
	bash .ci/install-kubelet-e2e.sh
	RDMA_E2E_REQUIRE=1 $(BIN)/pytest -q -m kubelet tests/e2e/kubelet

# The DRA suite (tests/e2e/dra): a real control plane (etcd, kube-apiserver, kube-scheduler,
# kube-controller-manager: one binary built from Go modules, cached by version) and a kubelet +
# containerd 2 node from the real-kubelet suite's tools, all on loopback. Needs root.
e2e-dra: $(STAMP)
	bash .ci/install-dra-e2e.sh
	RDMA_E2E_REQUIRE=1 $(BIN)/pytest -q -m dra tests/e2e/dra

# The soft-RoCE VM suite (docs/e2e-rdma.md): builds a Debian 12 VM image once (cached by its
# inputs), boots it under qemu and runs the plugin against the real kernel's rxe devices. The
# last line printed is the figures line.
RDMA_VM_OUT ?= /tmp/rdma-vm-out
e2e-rdma: $(STAMP)
	bash .ci/install-rdma-vm.sh
	@rc=0; RDMA_E2E_REQUIRE=1 RDMA_VM_OUT=$(RDMA_VM_OUT) $(BIN)/pytest -q -m rdma_vm tests/e2e/rdma \
		|| rc=$$?; cat $(RDMA_VM_OUT)/figures.txt 2>/dev/null || echo "e2e-rdma figures: none (no VM run)"; \
		exit $$rc

# The unit tests without the property tests: pure code, no processes (under 20 s).
test-fast: $(STAMP)
	$(BIN)/pytest -q -m "unit and not fuzz" tests/unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy --strict common/ supervisor/ cli/ demo/ workers/ podresources/ dra/ zygote/ simulator/ benchmarks/ tests/ .ci/sbom.py

bench: $(STAMP)
	@rc=0; for b in benchmarks/bench_*.py; do echo "== $$b"; \
		RDMA_SHARED_DP_FIGURES=benchmarks/figures.json $(BIN)/python $$b || rc=1; done; \
		if $(PY312) -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then \
			echo "== benchmarks/bench_scale.py with $$($(PY312) -V)"; \
			[ -x $(VENV312)/bin/python ] || { $(PY312) -m venv $(VENV312) && \
				$(VENV312)/bin/pip install -q -e '.[test]'; } && \
			$(VENV312)/bin/python benchmarks/bench_scale.py \
				--output benchmarks/results/scale-py312.json || rc=1; \
		else echo "== no $(PY312) here: the Python 3.12 scale table is not refreshed"; fi; \
		$(BIN)/python benchmarks/figures.py --render docs/benchmarks.md; exit $$rc

# CI smoke of the scale benchmark (1 and 8 resources, one run, no results file): it fails only
# when the benchmark itself breaks; targets are printed, not enforced.
bench-quick: $(STAMP)
	$(BIN)/python benchmarks/bench_scale.py --quick --output ''

# The image, with buildah (no Docker engine): `make image IMAGE=registry/name:tag [PUSH=1]`, on a
# Debian trixie base made here with debootstrap (no registry needed); BASE_IMAGE=... for another
# base. See .ci/build-image.sh.
image:
	bash .ci/install-image-tools.sh
	bash .ci/build-image.sh

# Release artifacts in dist/: the image as an OCI archive, the packaged chart, a CycloneDX SBOM
# of the image's Python packages, and SHA256SUMS. See .ci/release.sh.
release: tools
	bash .ci/install-image-tools.sh
	bash .ci/release.sh

# The chart is self-contained (vendorable, packageable): it carries copies of the kustomize
# manifests it reuses. Refresh them after editing the sources; tests/static/test_helm.py fails
# while they differ.
CHART_FILES := deployment/helm/rdma-shared-dp/files
chart-files:
	cp deployment/k8s/base/config.json $(CHART_FILES)/config.json
	cp deployment/k8s/components/nfd/nodefeaturerule.yaml $(CHART_FILES)/nodefeaturerule.yaml
	cp deployment/k8s/components/monitoring/dashboard.json \
		deployment/k8s/components/monitoring/prometheusrule.yaml \
		deployment/k8s/components/monitoring/service.yaml \
		deployment/k8s/components/monitoring/servicemonitor.yaml $(CHART_FILES)/

clean:
	rm -rf $(VENV) $(VENV312) build dist *.egg-info
