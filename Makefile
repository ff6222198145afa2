# Quill: the two commands in README.md are `make demo` and `make test`.
#
# Everything builds once, in one profile (release): clippy, the tests, the PKCS#11 module that the
# third-party suites load, and the binaries. CARGO_TARGET_DIR is respected when set (CI sets one
# outside the clone so runs reuse the build).

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

export CARGO_TARGET_DIR ?= $(CURDIR)/target
export QUILL_VENV ?= $(HOME)/.cache/quill/venv
# The SoftHSM differential test must not skip itself under `make test`.
export QUILL_REQUIRE_SOFTHSM := 1
RELEASE := $(abspath $(CARGO_TARGET_DIR))/release
# The simulator module every test and script loads.
export QUILL_HSM_MODULE := $(RELEASE)/libquill_hsm_sim.so
# SoftHSM 2, the reference module the simulator is measured against.
SOFTHSM_MODULE ?= /usr/lib/softhsm/libsofthsm2.so
# e.g. BENCH_HSM_ARGS="--seconds 10 --threads 2 --json"
BENCH_HSM_ARGS ?=

CARGO_NEXTEST := $(shell command -v cargo-nextest 2>/dev/null)

.PHONY: help setup build demo test fmt-check clippy production-build unit-test c-conformance third-party bench-hsm clean

help:
	@echo "make demo       set up, build, and run the demo (target/release/quill demo)"
	@echo "make test       set up, then fmt, clippy, unit/integration tests, third-party suites"
	@echo "make setup      install Debian packages and the Python venv ($(QUILL_VENV))"
	@echo "make build      cargo build --release --workspace --all-targets"
	@echo "make bench-hsm  hsm-sim against SoftHSM 2 on this machine"

setup:
	scripts/setup.sh

build:
	cargo build --release --workspace --all-targets

demo: setup build
	"$(RELEASE)/quill" demo

test: setup fmt-check clippy production-build build unit-test c-conformance third-party

# The operator binaries without the TEST keys (scripts/check-production-build.sh); `build` then
# puts the default binaries back.
production-build:
	scripts/check-production-build.sh

fmt-check:
	cargo fmt --all -- --check

clippy:
	cargo clippy --release --workspace --all-targets -- -D warnings

# `build` has compiled the test executables (--all-targets, release), so this only runs them.
unit-test: build
ifneq ($(CARGO_NEXTEST),)
	cargo nextest run --release --workspace --no-fail-fast
	cargo test --release --workspace --doc
else
	cargo test --release --workspace --no-fail-fast
endif

# hsm-sim's PKCS#11 conformance checks in plain C (hsm-sim/tests/c/conformance.c): the module is
# loaded with dlopen and called through its function lists, on a throwaway token directory (two
# slots that offer CKM_QUILL_TR31_TRANSLATE, which the module's default leaves off).
c-conformance: build
	cc -std=c11 -Wall -Wextra -Werror -o "$(RELEASE)/p11-conformance" hsm-sim/tests/c/conformance.c -ldl
	@dir="$$(mktemp -d)"; trap 'rm -rf "$$dir"' EXIT; \
	printf 'token_dir = "%s"\n[[slot]]\nid = 0\nkbpk_translate = true\n[[slot]]\nid = 1\nkbpk_translate = true\n' "$$dir" > "$$dir/quill-hsm.toml"; \
	QUILL_HSM_CONF="$$dir/quill-hsm.toml" "$(RELEASE)/p11-conformance" "$(QUILL_HSM_MODULE)"

third-party: build
	@failed=(); \
	for suite in tests/third_party/*.sh; do \
	  echo "== $$suite"; \
	  bash "$$suite" || failed+=("$$suite"); \
	done; \
	if [ $${#failed[@]} -gt 0 ]; then echo "third-party suites failed: $${failed[*]}"; exit 1; fi

bench-hsm: setup build
	"$(RELEASE)/quill-hsm-bench" --module "$(QUILL_HSM_MODULE)" --module "$(SOFTHSM_MODULE)" $(BENCH_HSM_ARGS)

clean:
	cargo clean
