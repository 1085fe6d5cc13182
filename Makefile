# berth: `make demo` boots the example appliance, `make test` runs every test.
# Both install what is missing first (scripts/setup.sh), so a fresh Debian
# machine needs nothing else.

SHELL := /bin/bash
.DEFAULT_GOAL := demo

# Static binaries for the initramfs: musl when the target is installed,
# glibc with crt-static otherwise. Expanded when a recipe runs, i.e. after setup.
TARGET = $(shell rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl && echo x86_64-unknown-linux-musl || echo x86_64-unknown-linux-gnu)
STATIC_FLAGS = $(if $(filter %-gnu,$(TARGET)),-C target-feature=+crt-static,)
BIN_DIR = $(CURDIR)/target/$(TARGET)/release
BUILD = $(BIN_DIR)/berth-build
export BERTH_CACHE ?= $(HOME)/.cache/berth

.PHONY: setup binaries demo test lint bench clean

setup:
	@scripts/setup.sh

binaries: setup
	RUSTFLAGS="$(STATIC_FLAGS)" cargo build --release --locked --target $(TARGET) --workspace --bins

out/demo: binaries examples/demo.toml
	$(BUILD) build examples/demo.toml -o out/demo

# Interactive: console attached, Ctrl-C powers the guest off cleanly.
# Under CI or without a terminal it powers off by itself once ready.
demo: out/demo
	@if [ -t 0 ] && [ "$${CI:-}" != "true" ]; then \
		$(BUILD) run out/demo --forward 8080:80; \
	else \
		$(BUILD) run out/demo --forward 8080:80 --power-off-when-ready; \
	fi

lint: setup
	cargo fmt --all --check
	cargo clippy --locked --workspace --all-targets -- -D warnings

# Host tests (root, namespaces) and the QEMU boot tests against the static
# binaries built above; the demo build first fills the kernel cache.
test: lint out/demo
	BERTH_BIN_DIR=$(BIN_DIR) cargo test --locked --workspace -- --test-threads=$$(nproc)

bench: out/demo
	BERTH_BIN_DIR=$(BIN_DIR) cargo run --release --locked -p qemu-tests --bin berth-bench

clean:
	rm -rf out target
