# slipway — the two commands a user needs are `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
TEST_THREADS ?= 4

.PHONY: test demo bench lint fuzz testenv-up testenv-down build dist deb check-deb

build:
	$(CARGO) build --release

## make dist: the lean binary (stripped, <= 30 MB) and its debug file, man pages and completions
## in target/dist/, from one release build; deploy/install.sh installs from there.
dist:
	@scripts/dist.sh

## make deb: target/debian/slipway_<version>_amd64.deb (cargo-deb, pinned, installed if absent),
## from the same release build; prints the binary and package sizes.
deb:
	@scripts/deb.sh

## make check-deb: what CI checks on the package (contents, modes, lintian, maintainer scripts).
check-deb:
	@scripts/check-deb.sh

## make test: start the real test environment (Docker, registry, S3 server, fixtures), run every
## test against it, stop what was started. The tests' exit code is kept.
test:
	@scripts/testenv.sh up
	@mkdir -p target; echo "test: building the tests (log: target/test-build.log)"; \
	  $(CARGO) test --workspace --features test-crash --locked --no-run >target/test-build.log 2>&1 || \
	  { tail -n 30 target/test-build.log; echo "test: the build failed; the whole log is target/test-build.log"; \
	    scripts/testenv.sh down; exit 1; }
	@set -a; . .testenv/env; set +a; \
	  $(CARGO) test --workspace --features test-crash -- --test-threads=$(TEST_THREADS); rc=$$?; \
	  scripts/testenv.sh down; exit $$rc

## make demo: rollout v1 -> v2 on three throw-away tenants, then a broken release caught at the
## canary and restored, then a snapshot, a damaged file restored and a drill, then the run
## history. Removes everything it started.
demo:
	@scripts/demo.sh

## make bench: the benchmarks of the README's Performance section (slipway next to the tool a
## user would otherwise use, same data, same run).
bench:
	@for b in bench/*.sh; do echo "== $$b"; bash "$$b" || exit 1; done

## make fuzz: build the fuzz targets (fuzz/: the archive reader, the file-list and manifest
## parsers) and run each for FUZZ_SECONDS (15); fails naming the input of any crash.
FUZZ_SECONDS ?= 15
fuzz:
	@scripts/fuzz.sh $(FUZZ_SECONDS)

lint:
	$(CARGO) fmt --all -- --check
	rustfmt --edition 2021 --check fuzz/src/*.rs fuzz/fuzz_targets/*.rs
	$(CARGO) clippy --workspace --all-targets --features test-crash -- -D warnings
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@if [ -x scripts/check-units.sh ]; then scripts/check-units.sh; fi

testenv-up:
	scripts/testenv.sh up

testenv-down:
	scripts/testenv.sh down
