# Two commands matter: `make run` (install what is missing, build, start a local
# cluster, walk through the API) and `make test` (every test tier).
SHELL := /bin/bash
PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
PG_BIN := $(dir $(PG_CONFIG))
PGRX_VERSION := 0.18.1
# The PostgREST-compatible HTTP server that tests/http.rs runs (PostgREST itself is not
# packaged here). The test takes the binary from POSTRUST_BIN.
POSTRUST_VERSION := 3.1.0
POSTRUST := $(or $(CARGO_HOME),$(HOME)/.cargo)/bin/postrust
export POSTRUST_BIN ?= $(POSTRUST)
APT_PACKAGES := postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo curl
RUN_DIR ?= /tmp/api_keys_run
RUN_PORT ?= 5433
PGRX_TEST_DATA ?= /tmp/api_keys_pgrx_test
PSQL_RUN := psql -X -h $(RUN_DIR) -p $(RUN_PORT) -U postgres
# The command line client (cli/), as make run builds it, pointed at the run cluster.
CLI_DEBUG := $${CARGO_TARGET_DIR:-target}/debug/api-keys
CLI_RUN := PGHOST=$(RUN_DIR) PGPORT=$(RUN_PORT) PGUSER=postgres PGDATABASE=postgres $(CLI_DEBUG)

# The tiers run in the order written (install before the tests that need it), also
# under make -j.
.NOTPARALLEL:

.PHONY: run test bench bench-scale bench-standby release-install fuzz reliability deps postrust install lint regress isolation pgrx-test cli install-cli cli-test stop psql clean

## make run: everything from a fresh machine to a guided tour on a local cluster.
# The cluster is stopped while the library is replaced: installing copies over the
# shared object in place, which a running server that has it mapped would not survive.
run: deps
	@if [ -f $(RUN_DIR)/data/postmaster.pid ]; then \
	    sudo -u postgres $(PG_BIN)pg_ctl -D $(RUN_DIR)/data -m fast -w stop >/dev/null; \
	fi
	@$(MAKE) --no-print-directory install
	@if [ ! -d $(RUN_DIR)/data ]; then \
	    echo "==> creating a cluster in $(RUN_DIR) (port $(RUN_PORT))"; \
	    PG_BIN=$(PG_BIN) tests/pg_cluster.sh start $(RUN_DIR) $(RUN_PORT) "listen_addresses = '127.0.0.1'" "fsync = on"; \
	else \
	    echo "==> starting the cluster in $(RUN_DIR) (port $(RUN_PORT))"; \
	    sudo -u postgres $(PG_BIN)pg_ctl -D $(RUN_DIR)/data -l $(RUN_DIR)/server.log -w start >/dev/null; \
	fi
	@# Quietly: on a second run both would say (NOTICE) that there is nothing to do.
	@PGOPTIONS='-c client_min_messages=warning' $(PSQL_RUN) -q \
	    -c "CREATE EXTENSION IF NOT EXISTS api_keys" -c "ALTER EXTENSION api_keys UPDATE"
	@$(PSQL_RUN) -f examples/tour.sql
	@cargo build --quiet -p api-keys-cli
	@echo
	@echo '8. The same from the command line (api-keys; README, "Command line"). The tour'"'"'s keys:'
	@echo '   $$ api-keys list --search tour --page-size 3'
	@$(CLI_RUN) list --search tour --page-size 3 | sed 's/^/   /'
	@echo
	@echo '   A key for a script or a CI step (--quiet prints the key alone), then its settings:'
	@echo '   $$ KEY=$$(api-keys create --name "tour: from a script" --permissions runs:read --expires-in 1d --quiet)'
	@key=$$($(CLI_RUN) create --name 'tour: from a script' --permissions runs:read --expires-in 1d --quiet) && \
	    prefix=$$(echo "$$key" | cut -d_ -f1-3) && \
	    echo "   \$$ api-keys show $$prefix" && \
	    $(CLI_RUN) show "$$prefix" | sed 's/^/   /'
	@echo
	@echo "Connect:  psql -h $(RUN_DIR) -p $(RUN_PORT) -U postgres    (or: make psql)"
	@echo "Stop:     make stop"

## make test: lint, pure and in-database units, the SQL surface, real-cluster integration.
test: deps postrust lint install regress isolation pgrx-test cli-test
	@echo "make test: all tiers passed"

## make bench: pgbench against a preloaded cluster with a release build; writes
## tests/bench/REPORT.md (see README, Performance).
bench: release-install
	PATH=$(PG_BIN):$$PATH tests/bench/run.sh

## make bench-scale: 1,000,000 keys: exact limits over four passes, shared memory per
## key, warm verification against 200 keys; writes tests/bench/SCALE.md (about 15 min).
bench-scale: release-install
	PATH=$(PG_BIN):$$PATH tests/bench/scale.sh

## make bench-standby: a primary and a hot standby, 100,000 keys: usage sent from the
## standby, per-hour limits across both; writes tests/bench/STANDBY.md (a few minutes).
bench-standby: release-install
	PATH=$(PG_BIN):$$PATH tests/bench/standby.sh

release-install: deps
	sudo mv -f $(PKGLIB_DIR)/api_keys.so $(PKGLIB_DIR)/api_keys.so.replaced 2>/dev/null || true
	cargo pgrx install --release --pg-config $(PG_CONFIG)

# rust-toolchain.toml names 1.95.0, the toolchain this builds with. Where rustup knows it
# only as "stable" (the same compiler, and nothing can be downloaded), give it that name
# too, as rustup itself lays toolchains out (rustup refuses to link an official name).
RUST_TOOLCHAIN := $(shell sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)
deps:
	@rustup toolchain list | grep -q '^$(RUST_TOOLCHAIN)' || \
	    { stable=$$(rustup run stable rustc --print sysroot) && \
	      [ "$$(rustup run stable rustc --version | cut -d' ' -f2)" = "$(RUST_TOOLCHAIN)" ] && \
	      ln -s "$$stable" "$$(dirname "$$stable")/$(RUST_TOOLCHAIN)-$$(basename "$$stable" | sed 's/^stable-//')"; } || \
	    { echo "rust $(RUST_TOOLCHAIN) is not installed: rustup toolchain install $(RUST_TOOLCHAIN)" >&2; exit 1; }
	@[ "$$(rustc --version | cut -d' ' -f2)" = "$(RUST_TOOLCHAIN)" ] || \
	    { echo "rustc is $$(rustc --version), not the $(RUST_TOOLCHAIN) of rust-toolchain.toml" >&2; exit 1; }
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	    echo "==> apt-get install$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@if [ "$$(cargo pgrx --version 2>/dev/null)" != "cargo-pgrx $(PGRX_VERSION)" ]; then \
	    echo "==> cargo install cargo-pgrx $(PGRX_VERSION) (about 10 minutes, once)"; \
	    cargo install cargo-pgrx --version $(PGRX_VERSION) --locked; \
	fi
	@if ! grep -qs '^pg15' $${PGRX_HOME:-$$HOME/.pgrx}/config.toml; then \
	    cargo pgrx init --pg15 $(PG_CONFIG); \
	fi

# Not --locked: the lockfile published with 3.1.0 pins a webpki-roots release that the
# registry no longer offers, so a locked install cannot resolve.
postrust:
	@if ! { [ -x "$(POSTRUST)" ] && \
	        cargo install --list | grep -qx 'postrust-server v$(POSTRUST_VERSION):'; }; then \
	    echo "==> cargo install postrust-server $(POSTRUST_VERSION) (the HTTP server of tests/http.rs; about 7 minutes, once)"; \
	    cargo install postrust-server --version $(POSTRUST_VERSION); \
	fi

# cargo pgrx installs the current version's script and the upgrade scripts (sql/). The
# install scripts of earlier releases are kept, frozen, in sql/released/ (as each release
# generated them; SHA256SUMS, checked by make lint), so that `CREATE EXTENSION api_keys
# VERSION '<old>'` builds what that release built; the upgrade test starts from each.
# Any other install script, left by an earlier install on this machine, is removed:
# PostgreSQL would take it instead of the real thing.
EXT_DIR = $$($(PG_CONFIG) --sharedir)/extension
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
$(if $(VERSION),,$(error could not read the version from Cargo.toml))
RELEASED_INSTALL_SCRIPTS := $(wildcard sql/released/api_keys--*.sql)
# The library is moved aside first, so the install writes a new file: a running server
# keeps the one it has mapped instead of crashing on a library overwritten in place.
PKGLIB_DIR = $$($(PG_CONFIG) --pkglibdir)
install:
	sudo mv -f $(PKGLIB_DIR)/api_keys.so $(PKGLIB_DIR)/api_keys.so.replaced 2>/dev/null || true
	cargo pgrx install --pg-config $(PG_CONFIG)
	sudo cp $(RELEASED_INSTALL_SCRIPTS) $(EXT_DIR)/
	sudo find $(EXT_DIR) -name 'api_keys--*.sql' ! -name 'api_keys--*--*' \
	    $(foreach f,$(RELEASED_INSTALL_SCRIPTS),! -name '$(notdir $(f))') \
	    ! -name 'api_keys--$(VERSION).sql' -print -delete

# Also: a released install script is never edited, and none is left unlisted.
lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cd sql/released && sha256sum --check --quiet SHA256SUMS
	@diff <(cd sql/released && ls api_keys--*.sql) <(cut -d' ' -f3 sql/released/SHA256SUMS) >/dev/null || \
	    { echo "sql/released/SHA256SUMS does not list exactly the released install scripts" >&2; exit 1; }

regress:
	PATH=$(PG_BIN):$$PATH tests/run_pg_regress.sh

# Concurrency: pg_isolation_regress specs (verify vs revoke/rotate, racing revokes, ...).
isolation:
	PATH=$(PG_BIN):$$PATH tests/run_pg_regress.sh --isolation

# Pure #[test]s and proptests, #[pg_test]s in a pgrx-managed cluster, and the
# integration tests in tests/*.rs that start their own clusters.
pgrx-test: postrust
	rm -rf $(PGRX_TEST_DATA)
	cargo pgrx test pg15 --runas postgres --pgdata=$(PGRX_TEST_DATA)

## make cli: the command line client, target/release/api-keys (README, "Command line").
cli:
	cargo build --release -p api-keys-cli
	@echo "built $${CARGO_TARGET_DIR:-target}/release/api-keys"

## make install-cli: the same, installed as ~/.cargo/bin/api-keys.
install-cli:
	cargo install --locked --path cli

# The client against real clusters with the installed extension (make test's install
# step): every command, output format, error path and exit code.
cli-test:
	PG_BIN=$(PG_BIN) cargo test -p api-keys-cli

## make fuzz: the parser and matcher property tests at volume (FUZZ_CASES each, default
## 1000000): key parser, scope matcher against a regex reference, CIDR matching against
## prefix arithmetic, X-Forwarded-For against a naive reference. They are pure Rust, so
## a release build of the library's unit tests runs them; no cluster. Not part of make
## test (which runs them at proptest's default 256 cases).
FUZZ_CASES ?= 1000000
fuzz: deps
	PROPTEST_CASES=$(FUZZ_CASES) cargo test --release --lib proptests:: -- --test-threads 2

## make reliability: the load, fault and random-input tests of make test again, with
## their figures printed (README, Reliability). LOAD_SECS and RANDOM_BYTES_SECS shorten them.
## The whole output is kept in target/reliability.log.
reliability: deps install
	set -o pipefail; cargo test --test load --test faults --test hostile_input -- --nocapture 2>&1 | \
	    tee target/reliability.log | grep -E '^(load|faults|random bytes):|^test |test result|panicked'

stop:
	-sudo -u postgres $(PG_BIN)pg_ctl -D $(RUN_DIR)/data -m fast -w stop

psql:
	$(PSQL_RUN)

clean: stop
	rm -rf $(RUN_DIR) $(PGRX_TEST_DATA)
	cargo clean
