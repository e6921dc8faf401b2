# srs-proxy — the two commands a new machine needs:
#
#   make run    build and start the proxy (memory store, default ports)
#   make test   run every test: Rust unit + integration tests, chart checks
#
# System packages the tests use (redis-server, ffmpeg, srt-tools for
# srt-live-transmit, python3-venv) are
# installed by `make deps` when missing and the user is root; otherwise it
# prints the one apt line from the README.

CARGO ?= cargo
APT_PACKAGES := redis-server ffmpeg srt-tools python3-venv

.PHONY: run build test test-rust deps bench fmt lint

run:
	$(CARGO) run --release --bin srs-proxy

build:
	$(CARGO) build --release --bin srs-proxy

deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v ffmpeg >/dev/null || missing="$$missing ffmpeg"; \
	command -v srt-live-transmit >/dev/null || missing="$$missing srt-tools"; \
	python3 -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing:$$missing — as root (or with sudo) run: apt-get install -y $(APT_PACKAGES)"; exit 1; \
	  fi; \
	fi

test: deps test-rust $(if $(wildcard mk/chart.mk),chart-test)

test-rust:
	@if command -v cargo-nextest >/dev/null; then \
	  $(CARGO) nextest run --workspace --no-fail-fast; \
	else \
	  $(CARGO) test --workspace --no-fail-fast; \
	fi

bench:
	$(CARGO) bench

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

-include mk/*.mk

# The OriginPool CRD, generated from src/crd.rs into crds/ and the chart's
# copy (`make manifests` then refreshes deploy/).
.PHONY: crds
crds:
	$(CARGO) run --quiet --bin crdgen > crds/originpools.srsproxy.io.yaml.tmp
	mv crds/originpools.srsproxy.io.yaml.tmp crds/originpools.srsproxy.io.yaml
	cp crds/originpools.srsproxy.io.yaml charts/srs-proxy/crds/originpools.srsproxy.io.yaml
