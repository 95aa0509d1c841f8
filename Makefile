# quic_dist: Erlang distribution over QUIC.
#   make demo   - install what is missing, build, run two nodes over QUIC and show the link
#   make test   - install what is missing, build, run every test suite, print a summary
#   make bench  - QUIC vs TCP vs TLS distribution, side by side
#   make certs  - a cluster CA and node certificates (CERTS_DIR, NODES="name host1,host2 ...")
#   make -s print-erl-flags - erl flags that make any erl/iex use the freshly built carrier
#                             (default mode: trust derived from the cookie, no certificates)

SHELL := /bin/bash
ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
export PATH := $(HOME)/.cargo/bin:$(PATH)

BUILD := $(ROOT)/_build
APP := $(BUILD)/quic_dist
EBIN := $(APP)/ebin
PRIV := $(APP)/priv
TEST_EBIN := $(BUILD)/test/ebin
NIF_SO := $(ROOT)/target/release/libquic_dist_nif.so
CERTS_DIR ?= $(ROOT)/certs
NODES ?=

ERL_SRCS := $(wildcard $(ROOT)/erlang/src/*.erl)
BEAMS := $(patsubst $(ROOT)/erlang/src/%.erl,$(EBIN)/%.beam,$(ERL_SRCS))
RUST_SRCS := $(shell find $(ROOT)/crates -name '*.rs' -o -name Cargo.toml) $(ROOT)/Cargo.toml

.PHONY: all deps build certs demo test test-rust test-erlang bench \
        print-erl-flags clean fmt lint

all: build

deps:
	@$(ROOT)/scripts/install-deps.sh

build: $(PRIV)/quic_dist_nif.so $(BEAMS) $(EBIN)/quic_dist.app

$(NIF_SO): $(RUST_SRCS)
	@cd $(ROOT) && cargo build --release -p quic_dist_nif >&2

$(PRIV)/quic_dist_nif.so: $(NIF_SO)
	@mkdir -p $(PRIV)
	@# Replace, never overwrite in place: a running VM may have the old file mapped.
	@rm -f $@ && cp $< $@

$(EBIN)/%.beam: $(ROOT)/erlang/src/%.erl
	@mkdir -p $(EBIN)
	@erlc -Werror +debug_info -o $(EBIN) $< >&2

$(EBIN)/quic_dist.app: $(ROOT)/erlang/src/quic_dist.app.src $(ERL_SRCS)
	@mkdir -p $(EBIN)
	@mods=$$(ls $(ROOT)/erlang/src/*.erl | xargs -n1 basename | sed 's/\.erl$$//' | paste -sd, -); \
	  sed "s/{modules, \[\]}/{modules, [$$mods]}/" $< > $@

certs: build
	@erl -noshell -pa $(EBIN) -run quic_dist_certs main $(CERTS_DIR) $(NODES)

print-erl-flags: build
	@echo "-pa $(EBIN) -proto_dist quic"

demo: deps build
	@$(ROOT)/scripts/demo.sh

test: deps build
	@$(ROOT)/scripts/run-tests.sh

bench: deps build
	@$(ROOT)/bench/run.sh

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

clean:
	rm -rf $(BUILD) $(ROOT)/target
