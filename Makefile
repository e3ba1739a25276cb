# crashvmm: the one entry point for people and CI.
#
#   make run        boot the demo guest, crash it, and show the crash report
#   make test       everything CI runs: lint, unit tests, build, images, integration tests
#   make scenario SCENARIO=boot OUT=/tmp/b     run one Linux scenario, outputs in OUT
#   make images     build the guest and test-host images from Debian packages
#   make build      the statically linked crashvmm binary

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
TARGET := x86_64-unknown-linux-gnu
BIN := target/$(TARGET)/release/crashvmm
IMAGES := build/images
CACHE := build/cache
SCENARIO ?= boot
OUT ?= build/scenario-$(SCENARIO)
# Debian packages the build and the test host need (guest-images/build.sh installs its own too).
APT_PACKAGES := qemu-system-x86 busybox-static cpio kexec-tools makedumpfile binutils gzip

.PHONY: all build images deps lint fmt unit integration test run scenario clean

all: build

# Install what a fresh Debian machine lacks: apt packages (downloads cached under build/) and
# the Rust components the lint step uses. Needs root for apt-get when something is missing.
deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing$$missing"; \
	  mkdir -p $(CACHE)/apt/partial; \
	  apt_opts="-o Dir::Cache::archives=$(CURDIR)/$(CACHE)/apt"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get $$apt_opts install -y --no-install-recommends $$missing || \
	    { apt-get update && apt-get $$apt_opts install -y --no-install-recommends $$missing; }; \
	fi
	@$(CARGO) fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@$(CARGO) clippy --version >/dev/null 2>&1 || rustup component add clippy

# Statically linked, so the same binary runs inside the software KVM test host.
build:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --locked --release --target $(TARGET) -p vmm

images:
	bash guest-images/build.sh $(IMAGES) $(CACHE)

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --locked --workspace --lib --bins

integration: build images
	$(CARGO) test --locked -p integration --tests

test: deps lint unit integration
	@echo "make test: all passed"

scenario: build images
	$(CARGO) run --locked -q -p integration --bin scenario -- --name $(SCENARIO) --out $(OUT)

# The demo: boot the Debian guest (a crash kernel loaded), crash it with sysrq, let its kdump
# write the dump to the crash disk, show the crash report.
run: deps build images
	$(CARGO) run --locked -q -p integration --bin scenario -- --name kdump --out build/run --show-console
	@echo
	@$(BIN) report build/run/crashes
	@echo "events: build/run/events.jsonl; crash directory: $$(ls -d build/run/crashes/*/ | tail -n 1)"

clean:
	$(CARGO) clean
	rm -rf build/images build/run build/scenario-*
