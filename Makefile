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

# The demo's workloads run busybox: an image made here from Debian's
# busybox-static with umoci and skopeo, baked into the initramfs.
out/images/busybox.tar: scripts/busybox-image.sh | setup
	scripts/busybox-image.sh $@ busybox:latest

out/demo: binaries examples/demo.toml out/images/busybox.tar
	$(BUILD) build examples/demo.toml --image out/images/busybox.tar -o out/demo

# The demo as every boot medium (ISO, raw disk and its conversions).
out/media: binaries examples/demo.toml out/images/busybox.tar
	$(BUILD) build examples/demo.toml --image out/images/busybox.tar -o out/media --format iso,raw,qcow2,vmdk,vdi,vhd

# Boots the demo with its page published on 127.0.0.1:8080 and, once the
# guest is ready, fetches that page from the host to show the workloads
# serving. Interactive: the console stays attached and Ctrl-C powers the
# guest off cleanly. Under CI or without a terminal it then powers off by
# itself, and a page that cannot be fetched fails the run.
DEMO_PORT ?= 8080
DEMO_CHECK = curl -fsS --retry 30 --retry-all-errors --retry-delay 1 --max-time 5 http://127.0.0.1:$(DEMO_PORT)/
demo: out/demo
	@if [ -t 0 ] && [ "$${CI:-}" != "true" ]; then \
		$(BUILD) run out/demo --forward $(DEMO_PORT):80 \
			--when-ready '$(DEMO_CHECK) && echo "demo: serving on http://127.0.0.1:$(DEMO_PORT)/ (Ctrl-C powers off)"'; \
	else \
		$(BUILD) run out/demo --forward $(DEMO_PORT):80 --power-off-when-ready --when-ready '$(DEMO_CHECK)'; \
	fi

lint: setup
	cargo fmt --all --check
	cargo clippy --locked --workspace --all-targets -- -D warnings

# Host tests (root, namespaces) and the QEMU boot tests against the static
# binaries built above; the demo build first fills the kernel cache.
test: lint out/demo
	BERTH_BIN_DIR=$(BIN_DIR) cargo test --locked --workspace --no-fail-fast -- --test-threads=$$(nproc)

bench: out/demo out/media
	BERTH_BIN_DIR=$(BIN_DIR) cargo run --release --locked -p qemu-tests --bin berth-bench

clean:
	rm -rf out target
