# CBS — the two commands that matter: `make run` and `make test`.
# Every target installs what it needs when it is missing, and is idempotent.

SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TARGET_DIR ?= $(CURDIR)/target
WASM_OUT := $(CARGO_TARGET_DIR)/wasm32-wasip2/cell
# One build of the host serves `make run` and `make test`: the dev profile,
# with only the component compiler optimized (Cargo.toml, ADR 19). `make
# bench` uses release.
HOST_BIN := $(CARGO_TARGET_DIR)/debug/cbs-host

# Cell crates built into components: <folder>:<crate>. The demo's first:
# `make run` builds only those.
DEMO_CELLS := \
	cells/io.prompt_name:io-prompt-name \
	cells/logic.greet:logic-greet \
	cells/io.print_greeting:io-print-greeting
CELLS := $(DEMO_CELLS) \
	cells/io.polyglot:io-polyglot \
	tests/cells/faulty:test-faulty
# Test-only: a WASI command component, which is not a cell.
NOT_A_CELL := tests/cells/not-a-cell:test-not-a-cell

DEMO := $(foreach c,$(DEMO_CELLS),$(word 1,$(subst :, ,$(c))))

# Builds <folder>:<crate> pairs (and the extra crates in $(2)) into
# components, and copies each cell's next to its cell.toml.
define build_components
	$(CARGO) build --profile cell --target wasm32-wasip2 $(foreach c,$(1) $(2),-p $(word 2,$(subst :, ,$(c))))
	@for c in $(1); do \
		dir=$${c%%:*}; crate=$${c##*:}; \
		cp -f "$(WASM_OUT)/$${crate//-/_}.wasm" "$$dir/$${crate//-/_}.wasm"; \
	done
endef

# Python: the project venv holds componentize-py and nats-py; each native
# cell gets its own venv. PYTHON is the interpreter the host embeds (pyo3
# builds against `python3` on PATH), so keep them the same.
PYTHON ?= python3
VENV := .venv
# Python cells: components (componentize-py) and native-pool cells (a venv each).
PY_CELLS := cells/logic.describe cells/logic.stats cells/logic.tally \
	tests/cells/py-faulty tests/cells/py-faulty-wasm tests/cells/py-async
POLYGLOT := cells/io.polyglot cells/logic.describe cells/logic.stats cells/text.headline \
	$(if $(wildcard cells/logic.shout/bin/logic-shout),cells/logic.shout)

.PHONY: help run run-http run-polyglot build host host-bin demo-cells cells bench-cells python-cells test setup-chromium setup-axe console-screenshots console-bench test-dart test-python test-kubernetes test-openapi test-monitoring dart-cells lint fmt fuzz fuzz-merge bench setup setup-rust setup-nats setup-prometheus setup-python setup-pyo3 setup-registry setup-image image bench-instructions clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

run: host-bin demo-cells ## Run the greeting demo: `echo Ada | make run`
	@[ -t 0 ] && echo "What is your name? (type it and press Enter)" >&2 || true
	@$(HOST_BIN) run --log-level $${CBS_LOG:-warn} --start io.prompt_name $(DEMO)

run-http: host-bin demo-cells ## Serve logic.greet over HTTP on 127.0.0.1:8080: curl -d '{"name":"Ada"}' localhost:8080/greet
	@$(HOST_BIN) run --log-level $${CBS_LOG:-info} --http $${CBS_HTTP:-127.0.0.1:8080} cells/logic.greet

run-polyglot: host-bin cells python-cells ## Rust → Python (component) → Python (native, numpy) → sidecar → Dart (after make dart-cells) → Rust
	@$(HOST_BIN) run --log-level $${CBS_LOG:-warn} --start io.polyglot \
		--input '{"numbers": [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]}' $(POLYGLOT)

build: host cells python-cells ## Build the host and every cell

host: setup-rust setup-pyo3 ## Build cbs-host and cbs (target/debug)
	@echo "building cbs-host and cbs (the first build compiles wasmtime: a few minutes)..." >&2
	$(CARGO) build -p cbs-cli

host-bin: setup-rust setup-pyo3 ## Build only cbs-host, what the demos run (target/debug)
	@echo "building cbs-host (the first build compiles wasmtime: a few minutes)..." >&2
	$(CARGO) build -p cbs-cli --bin cbs-host

demo-cells: setup-rust ## Build the demo's cells into components
	@echo "building the demo cells (wasm32-wasip2)..." >&2
	$(call build_components,$(DEMO_CELLS))

cells: setup-rust ## Build every Rust cell into a component, next to its cell.toml
	@echo "building cell components (wasm32-wasip2)..." >&2
	$(call build_components,$(CELLS),$(NOT_A_CELL))
	@cp -f "$(WASM_OUT)/test-not-a-cell.wasm" tests/cells/not-a-cell/not_a_cell.wasm

bench-cells: setup-rust ## Ten distinct components (bench-variant, features v0..v9) for make bench's start-up rows
	@echo "building the ten bench variants (wasm32-wasip2)..." >&2
	@mkdir -p tests/cells/variant/out
	@for v in 0 1 2 3 4 5 6 7 8 9; do \
		$(CARGO) build --quiet --profile cell --target wasm32-wasip2 -p bench-variant --features v$$v || exit 1; \
		cp -f "$(WASM_OUT)/bench_variant.wasm" tests/cells/variant/out/bench_variant_$$v.wasm; \
	done

python-cells: setup-python ## Build the Python cells: components, and the native cells' venvs
	@$(VENV)/bin/python scripts/build-python-cell $(PY_CELLS)

# Parts of tests skipped for a missing tool (dart), one line each: cargo
# hides a passing test's stderr, so `make test` prints them at the end.
export CBS_TEST_SKIPS ?= $(CARGO_TARGET_DIR)/test-skips.txt
define print_skips
	@if [ -s "$(CBS_TEST_SKIPS)" ]; then \
		echo "== $$(wc -l < "$(CBS_TEST_SKIPS)") part(s) of the tests skipped:"; \
		cat "$(CBS_TEST_SKIPS)"; \
	else \
		echo "== no part of the tests skipped"; \
	fi
endef

test: setup-rust setup-nats setup-chromium setup-axe setup-registry setup-image host cells python-cells ## Run every test (unit, component, bus conformance, end to end)
	@mkdir -p "$$(dirname "$(CBS_TEST_SKIPS)")" && rm -f "$(CBS_TEST_SKIPS)"
	$(CARGO) test -p cbs-host -p cbs-cli -p cbs-cell -p cbs-tests -p cbs-fuzz
	@$(MAKE) --no-print-directory test-python test-kubernetes test-openapi test-monitoring test-dart
	$(print_skips)

test-python: setup-python ## The Python SDK's own tests (unittest, in the project venv)
	cd guest-sdk/python && ../../$(VENV)/bin/python -m unittest discover -s tests

test-kubernetes: setup-python host-bin ## deploy/kubernetes validated offline (kubernetes-validate, KEDA ScaledObject schema)
	$(VENV)/bin/python scripts/check-kubernetes $(HOST_BIN)

test-openapi: setup-python setup-nats host cells ## schemathesis against the /openapi.json of cbs-host run --http and cbs gateway: open, bearer (JWT) and failing routes
	$(VENV)/bin/python scripts/check-openapi $(HOST_BIN) $(CARGO_TARGET_DIR)/debug/cbs $(VENV)/bin/schemathesis

test-monitoring: setup-prometheus host-bin demo-cells ## deploy/prometheus rules (promtool check and unit tests) and deploy/grafana's dashboard against a real host's /metrics
	promtool check rules deploy/prometheus/cbs-rules.yml
	promtool check config deploy/prometheus/prometheus.yml
	promtool test rules deploy/prometheus/cbs-rules.test.yml
	python3 scripts/check-dashboard $(HOST_BIN) promtool deploy/grafana/cbs-dashboard.json deploy/prometheus/cbs-rules.yml deploy/prometheus/cbs-rules.test.yml

test-dart: ## The Dart SDK's tests, where `dart` is installed
	@if command -v dart >/dev/null; then \
		cd guest-sdk/dart && dart pub get && dart test; \
	else \
		mkdir -p "$$(dirname "$(CBS_TEST_SKIPS)")"; \
		echo "SKIPPED: the Dart SDK's tests (guest-sdk/dart): dart is not on PATH. Install the Dart SDK to run them." \
			| tee -a "$(CBS_TEST_SKIPS)"; \
	fi

dart-cells: ## Build the Dart cells into executables (needs dart on PATH)
	cd cells/logic.shout && dart pub get && dart compile exe bin/main.dart -o bin/logic-shout

lint: setup-rust setup-pyo3 ## rustfmt, clippy (warnings are errors), the architecture doc, no import circles
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy -p cbs-host -p cbs-cli -p cbs-cell -p cbs-tests -p cbs-fuzz --all-targets -- -D warnings
	@python3 scripts/check-architecture

fmt:
	$(CARGO) fmt --all

# Fuzzing (nightly Rust and cargo-fuzz; not part of `make test`, which
# replays the corpora on stable). New inputs go to fuzz/libfuzzer/corpus/;
# `make fuzz-merge` folds those that add coverage into fuzz/corpus/.
FUZZ_TARGETS := envelope cell_toml bundle frame compat python_lock jwt traceparent http_request load_report heartbeat
FUZZ_RUNS ?= 10000000
FUZZ_MAX_LEN ?= 65536
FUZZ := cargo +nightly fuzz
# Debug assertions and overflow checks on, as in the dev profile the host
# runs with (ADR 19): an overflow on outside input is a crash here too.
FUZZ_FLAGS := --fuzz-dir fuzz/libfuzzer --sanitizer none --codegen-units 16 --debug-assertions
fuzz: ## Run every fuzz target FUZZ_RUNS times (default 10 million) from the committed corpora
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/libfuzzer/corpus/$$t && \
		$(FUZZ) run $(FUZZ_FLAGS) $$t fuzz/libfuzzer/corpus/$$t fuzz/corpus/$$t -- \
			-runs=$(FUZZ_RUNS) -max_len=$(FUZZ_MAX_LEN) -print_final_stats=1 || exit 1; \
	done

fuzz-merge: ## Fold new fuzz inputs that add coverage (edges) into the committed corpora
	@for t in $(FUZZ_TARGETS); do \
		fuzz/libfuzzer/target/x86_64-unknown-linux-gnu/release/$$t -set_cover_merge=1 -use_counters=0 \
			fuzz/corpus/$$t fuzz/libfuzzer/corpus/$$t || exit 1; \
	done

setup: setup-rust setup-nats setup-prometheus setup-python setup-registry setup-image ## Install the toolchain pieces, nats-server, promtool, the Python venv, a registry and buildah

setup-rust:
	@rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || { \
		echo "installing the wasm32-wasip2 Rust target..." >&2; \
		rustup target add wasm32-wasip2; }

setup-chromium:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		echo "installing Debian's chromium and chromium-driver (the console's browser tests)..." >&2; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }

# axe-core, the accessibility rules the console's browser test runs in
# each view (it injects the script through WebDriver: the console never
# serves or fetches it). Pinned; from npm into the target dir.
AXE_VERSION := 4.14.1
AXE_DIR := $(CARGO_TARGET_DIR)/axe-core
setup-axe:
	@grep -qs '"version": "$(AXE_VERSION)"' "$(AXE_DIR)/node_modules/axe-core/package.json" || { \
		command -v npm >/dev/null || { \
			echo "installing Debian's npm (to fetch axe-core for the console's accessibility test)..." >&2; \
			SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
			$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq npm >/dev/null; }; \
		echo "installing axe-core $(AXE_VERSION) from npm into $(AXE_DIR) (the console's accessibility test)..." >&2; \
		npm install --prefix "$(AXE_DIR)" --no-save --no-audit --no-fund --silent axe-core@$(AXE_VERSION); }

console-screenshots: setup-chromium setup-axe host cells ## The console's browser tests, saving each view as docs/console/<view>.png
	CBS_SCREENSHOTS=$(CURDIR)/docs/console $(CARGO) test -p cbs-tests --test console

console-bench: setup-chromium host cells ## Time to show a lattice of 10 hosts and 50 cells in the console, and the bytes it took
	$(CARGO) test -p cbs-tests --test console measure_the_first_render -- --ignored --nocapture

setup-nats:
	@command -v nats-server >/dev/null || { \
		echo "installing nats-server from Debian's packages..." >&2; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq nats-server >/dev/null; }

# The registry tests' own registry (the CNCF distribution registry) and
# skopeo, a second OCI client that must read what `cbs push` writes.
setup-registry:
	@command -v docker-registry >/dev/null && command -v skopeo >/dev/null || { \
		echo "installing Debian's docker-registry and skopeo (the registry tests)..." >&2; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends docker-registry skopeo >/dev/null; }

# buildah builds the host image from scratch, without a daemon.
setup-image:
	@command -v buildah >/dev/null || { \
		echo "installing Debian's buildah (the host image, built without a daemon)..." >&2; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends buildah >/dev/null; }

image: setup-image setup-pyo3 ## The cbs-host container image, built without a daemon: target/image/cbs-host-<version>.oci.tar
	$(CARGO) build --release -p cbs-cli --bin cbs-host --bin cbs
	scripts/build-image --bin-dir $(CARGO_TARGET_DIR)/release --out $(CARGO_TARGET_DIR)/image

# Instructions per request (callgrind): a count that does not move with the
# machine's load, for judging a change to the hot path (#33).
bench-instructions: setup-nats cells ## Instructions per request (valgrind callgrind): logic.greet pooled in process and over one NATS hop
	@bin=$$($(CARGO) bench -p cbs-tests --bench instructions --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))/\1/p'); \
		[ -n "$$bin" ] || { echo "bench-instructions: the bench did not build" >&2; exit 1; }; \
		scripts/instructions "$$bin" $${CBS_INSTR_N:-200}

setup-prometheus:
	@command -v promtool >/dev/null || { \
		echo "installing Debian's prometheus (promtool, for the alerting rules' tests)..." >&2; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

# What the host's pyo3 build and the venvs need of $(PYTHON).
PY_OK = $(PYTHON) -c 'import ensurepip, os, sys, sysconfig as c; assert sys.version_info >= (3, 11) and c.get_config_var("Py_ENABLE_SHARED") and os.path.isfile(c.get_config_var("INCLUDEPY") + "/Python.h")' 2>/dev/null

# The host embeds CPython (the native Python pool): its build needs the
# interpreter's headers and shared libpython.
setup-pyo3:
	@$(PY_OK) || { \
		echo "installing python3-venv and python3-dev from Debian's packages..." >&2; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq python3-venv python3-dev >/dev/null; }
	@$(PY_OK) || { echo "the host needs $(PYTHON) >= 3.11 with venv, headers and a shared libpython" >&2; exit 1; }

# The project venv, from PyPI; redone only when its requirements change.
setup-python: $(VENV)/.cbs-setup
$(VENV)/.cbs-setup: guest-sdk/python/requirements-dev.txt | setup-pyo3
	@[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	@echo "installing the project's Python tools (componentize-py, nats-py, kubernetes-validate, schemathesis) into $(VENV)..." >&2
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -r $<
	@touch $@

clean:
	$(CARGO) clean
	rm -f $(foreach c,$(CELLS),$(word 1,$(subst :, ,$(c)))/*.wasm) tests/cells/not-a-cell/*.wasm
	rm -f cells/logic.describe/*.wasm tests/cells/py-faulty-wasm/*.wasm
	rm -rf $(foreach c,$(PY_CELLS),$(c)/.venv)

bench: setup-rust setup-nats cells bench-cells python-cells ## Benchmarks next to raw NATS; writes bench/results/<date>.md/.json
	$(CARGO) build --release -p cbs-cli
	$(CARGO) bench -p cbs-tests --bench overhead
	@$(MAKE) --no-print-directory bench-instructions
	$(CARGO) bench -p cbs-host --bench hot_path -- --quick
