# crashvmm: the one entry point for people and CI.
#
#   make run        boot the demo guest, crash it, and show the crash report
#   make test       everything CI runs: lint, unit tests, build, images, integration tests
#   make scenario SCENARIO=boot OUT=/tmp/b     run one Linux scenario, outputs in OUT
#   make images     build the guest and test-host images from Debian packages
#   make build      the statically linked crashvmm binary
#   make fuzz       fuzz the devices' protocol code and the crash analysis, FUZZ_SECONDS (60) per target; not in `make test`
#   make bench      crashvmm against QEMU: writes docs/benchmarks.md and docs/benchmarks.png
#                   (about 8 minutes after the build, 20 GiB of free disk; not in `make test`)
#   make crash-suites   every crash trigger on two Debian kernels with crash_kexec_post_notifiers 0/1
#                   and --hyperv on/off (suites/every-trigger.toml): docs/crash-suites.md (90 min;
#                   not in `make test`)
#   make boot-reliability   50 boots each under crashvmm and QEMU in the test host, failures
#                   counted: docs/boot-reliability.md (about an hour; not in `make test`)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
TARGET := x86_64-unknown-linux-gnu
BIN := target/$(TARGET)/release/crashvmm
IMAGES := build/images
CACHE := build/cache
SCENARIO ?= boot
OUT ?= build/scenario-$(SCENARIO)
# Debian packages the build and the test host need (guest-images/build.sh installs its own too);
# crash (reads the guest's vmcores in the pagecache scenario test) and e2fsprogs (mke2fs -d: that
# scenario's data disk) are for the integration tests.
# python3-venv: the S3 test server (PyPI's moto, in build/moto-venv) of the delivery tests.
# time: /usr/bin/time, which measures crashvmm's peak memory in the test guest's flood test.
APT_PACKAGES := qemu-system-x86 busybox-static cpio kexec-tools makedumpfile binutils gzip crash e2fsprogs python3-venv time

.PHONY: all build images testguest deps lint fmt unit image-tests integration test run scenario fuzz bench boot-reliability crash-suites clean

all: build

# Install what a fresh Debian machine lacks: apt packages (guest-images/debian.sh: refreshes apt
# lists that are too old to download from; downloads cached under build/cache/apt) and the Rust
# components the lint step uses. Needs root for apt-get when something is missing.
deps:
	@CACHE_DIR=$(CACHE) bash guest-images/debian.sh install $(APT_PACKAGES)
	@$(CARGO) fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@$(CARGO) clippy --version >/dev/null 2>&1 || rustup component add clippy
	@rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-none || rustup target add x86_64-unknown-none

# Statically linked, so the same binary runs inside the software KVM test host.
build:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --locked --release --target $(TARGET) -p vmm

images: testguest
	bash guest-images/build.sh $(IMAGES) $(CACHE)

# The project's own test guest (guest-images/testguest): a PVH ELF for x86_64-unknown-none,
# built outside the workspace with its own lock file and target directory.
TESTGUEST_DIR := guest-images/testguest
TESTGUEST_CARGO := cd $(TESTGUEST_DIR) && env -u RUSTFLAGS -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET $(CARGO)
testguest:
	@rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-none || rustup target add x86_64-unknown-none
	$(TESTGUEST_CARGO) build --locked --release --target x86_64-unknown-none
	@mkdir -p $(IMAGES)/testguest
	@cmp -s $(TESTGUEST_DIR)/target/x86_64-unknown-none/release/testguest $(IMAGES)/testguest/testguest.elf || \
	  cp $(TESTGUEST_DIR)/target/x86_64-unknown-none/release/testguest $(IMAGES)/testguest/testguest.elf

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings
	$(TESTGUEST_CARGO) fmt -- --check
	$(TESTGUEST_CARGO) clippy --locked --release --target x86_64-unknown-none -- -D warnings

unit:
	$(CARGO) test --locked --workspace --lib --bins

# The image build's own tests (guest-images/tests/): kernel resolution against a local archive
# that dropped the kernels the apt lists name.
image-tests:
	bash guest-images/tests/stale-lists.sh

# The delivery crate's tests against a real S3-protocol server process (moto) need no VM;
# integration/tests/upload.rs drives crashvmm itself against one.
integration: build images
	$(CARGO) test --locked -p delivery --tests
	$(CARGO) test --locked -p integration --tests

test: deps lint unit image-tests integration
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

# The cargo-fuzz targets of fuzz/ (nightly), FUZZ_SECONDS each: the corpus grows in
# fuzz/corpus/<target> from the committed fuzz/seeds/<target>; a finding is saved under
# fuzz/artifacts/<target>/ and fails the run (logs in build/fuzz/).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := vmbus_messages vmbus_server hypercall crash_message analysis virtio_net
CARGO_NIGHTLY ?= cargo +nightly

fuzz:
	@rustup run nightly rustc --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	cd fuzz && $(CARGO_NIGHTLY) test --locked --lib -q
	$(CARGO_NIGHTLY) fuzz build
	@mkdir -p build/fuzz; failed=""; \
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/corpus/$$t; \
	  echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
	  $(CARGO_NIGHTLY) fuzz run $$t fuzz/corpus/$$t fuzz/seeds/$$t -- -max_total_time=$(FUZZ_SECONDS) \
	    -timeout=10 -print_final_stats=1 >build/fuzz/$$t.log 2>&1 || { failed="$$failed $$t"; tail -n 40 build/fuzz/$$t.log; }; \
	done; \
	for t in $(FUZZ_TARGETS); do \
	  execs=$$(sed -n 's/^stat::number_of_executed_units: *//p' build/fuzz/$$t.log | tail -n 1); \
	  case " $$failed " in *" $$t "*) r=FINDING;; *) r=ok;; esac; \
	  printf 'fuzz: %-16s %-8s %12s executions\n' $$t $$r "$${execs:-?}"; \
	done; \
	if [ -n "$$failed" ]; then echo "make fuzz: findings in$$failed (inputs under fuzz/artifacts/)"; exit 1; fi
	@echo "make fuzz: no findings"

# One run measures crashvmm and, beside it, QEMU on the same machine (integration/src/bench/):
# vmcore throughput, start time and resident memory, the crash path, filtered and live dumps,
# the crash analysis, and a fleet's store (10,000 crash directories in moto, the S3 server the
# delivery tests use: delivery/tests/s3-server.sh installs it). The plot's font comes from
# fonts-dejavu-core. Scratch files go to build/bench (deleted as the run goes).
bench:
	@$(MAKE) --no-print-directory deps APT_PACKAGES="$(APT_PACKAGES) fonts-dejavu-core"
	@$(MAKE) --no-print-directory build images
	$(CARGO) run --locked --release -q -p integration --bin bench -- --doc docs/benchmarks.md --png docs/benchmarks.png

# The Debian guest booted BOOT_RUNS (50) times under crashvmm, QEMU and crashvmm --hyperv off in
# the software KVM test host, failures counted: writes docs/boot-reliability.md (about an hour
# here; not in `make test`).
BOOT_RUNS ?= 50
boot-reliability: deps build images
	$(CARGO) run --locked --release -q -p integration --bin boot_reliability -- --runs $(BOOT_RUNS) --doc docs/boot-reliability.md

# `crashvmm test` on suites/every-trigger.toml (80 cases, one test-host boot each here): the
# results table in docs/crash-suites.md, each case's outputs under build/suite-every-trigger.
crash-suites: deps build images
	$(BIN) test suites/every-trigger.toml --out build/suite-every-trigger --cache $(CACHE) \
	  --test-host $(IMAGES)/host --markdown docs/crash-suites.md

clean:
	$(CARGO) clean
	rm -rf build/images build/run build/scenario-*
