# CBS — the two commands that matter: `make run` and `make test`.
# Every target installs what it needs when it is missing, and is idempotent.

SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TARGET_DIR ?= $(CURDIR)/target
WASM_OUT := $(CARGO_TARGET_DIR)/wasm32-wasip2/cell
HOST_BIN := $(CARGO_TARGET_DIR)/release/cbs-host

# Cell crates built into components: <folder>:<crate>.
CELLS := \
	cells/io.prompt_name:io-prompt-name \
	cells/logic.greet:logic-greet \
	cells/io.print_greeting:io-print-greeting \
	tests/cells/faulty:test-faulty
# Test-only: a WASI command component, which is not a cell.
NOT_A_CELL := tests/cells/not-a-cell:test-not-a-cell

DEMO := cells/io.prompt_name cells/logic.greet cells/io.print_greeting

.PHONY: help run build host cells test test-dart dart-cells lint fmt bench setup setup-rust setup-nats clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

run: build ## Run the greeting demo: `echo Ada | make run`
	@[ -t 0 ] && echo "What is your name? (type it and press Enter)" >&2 || true
	@$(HOST_BIN) run --log-level $${CBS_LOG:-warn} --start io.prompt_name $(DEMO)

build: host cells ## Build the host (release) and every cell component

host: setup-rust
	$(CARGO) build --release -p cbs-host

cells: setup-rust ## Build the cells into components, next to their cell.toml
	@echo "building cell components (wasm32-wasip2)..." >&2
	$(CARGO) build --profile cell --target wasm32-wasip2 $(foreach c,$(CELLS) $(NOT_A_CELL),-p $(word 2,$(subst :, ,$(c))))
	@for c in $(CELLS); do \
		dir=$${c%%:*}; crate=$${c##*:}; \
		cp -f "$(WASM_OUT)/$${crate//-/_}.wasm" "$$dir/$${crate//-/_}.wasm"; \
	done
	@cp -f "$(WASM_OUT)/test-not-a-cell.wasm" tests/cells/not-a-cell/not_a_cell.wasm

test: setup-rust setup-nats cells ## Run every test (unit, component, bus conformance, end to end)
	$(CARGO) build -p cbs-host
	$(CARGO) test -p cbs-host -p cbs-cell -p cbs-tests
	@$(MAKE) --no-print-directory test-dart

test-dart: ## The Dart SDK's tests, where `dart` is installed
	@if command -v dart >/dev/null; then \
		cd guest-sdk/dart && dart pub get && dart test; \
	else \
		echo "SKIPPED: the Dart SDK's tests (guest-sdk/dart): dart is not on PATH. Install the Dart SDK to run them."; \
	fi

dart-cells: ## Fetch the Dart cells' packages (needs dart on PATH)
	cd cells/logic.shout && dart pub get

lint: setup-rust ## rustfmt and clippy, warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy -p cbs-host -p cbs-cell -p cbs-tests --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

setup: setup-rust setup-nats ## Install the toolchain pieces and nats-server

setup-rust:
	@rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || { \
		echo "installing the wasm32-wasip2 Rust target..." >&2; \
		rustup target add wasm32-wasip2; }

setup-nats:
	@command -v nats-server >/dev/null || { \
		echo "installing nats-server from Debian's packages..." >&2; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq nats-server >/dev/null; }

clean:
	$(CARGO) clean
	rm -f $(foreach c,$(CELLS),$(word 1,$(subst :, ,$(c)))/*.wasm) tests/cells/not-a-cell/*.wasm

bench: setup-rust setup-nats cells ## Benchmarks next to raw NATS; writes bench/results/<date>.md/.json
	$(CARGO) build --release -p cbs-host
	$(CARGO) bench -p cbs-tests --bench overhead
	$(CARGO) bench -p cbs-host --bench hot_path -- --quick
