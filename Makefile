# srs-proxy — the two commands a new machine needs:
#
#   make run    build and start the proxy (memory store, default ports)
#   make test   run every test: Rust unit + integration tests, chart checks
#               (it first builds the Kubernetes control plane the tests run
#               against, once: see mk/kube.mk)
#
# System packages the tests use (redis-server, ffmpeg, srt-tools for
# srt-live-transmit, python3-venv, iproute2 for `ss`) are installed by
# `make deps` when missing and the user is root; otherwise it prints the one
# apt line from the README. `make bench` also wants nginx (the baseline) and
# valgrind (instruction counts).
# The Redis tests also run sentinels (`redis-server --sentinel`: same
# binary, no redis-sentinel package needed) and build clusters with
# `redis-cli` (redis-tools, which redis-server depends on).

CARGO ?= cargo
APT_PACKAGES := redis-server ffmpeg srt-tools python3-venv iproute2 util-linux
BENCH_PACKAGES := nginx-light valgrind

.PHONY: run build test test-rust deps bench bench-deps fmt lint

run:
	$(CARGO) run --release --bin srs-proxy

build:
	$(CARGO) build --release --bin srs-proxy

# Installs the packages in $$missing with apt when root, else says which;
# $(1) is the full list for the message.
define apt_missing
if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing:$$missing — as root (or with sudo) run: apt-get install -y $(1)"; exit 1; \
	  fi; \
	fi
endef

deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v redis-cli >/dev/null || missing="$$missing redis-tools"; \
	command -v ffmpeg >/dev/null || missing="$$missing ffmpeg"; \
	command -v srt-live-transmit >/dev/null || missing="$$missing srt-tools"; \
	command -v ss >/dev/null || missing="$$missing iproute2"; \
	command -v unshare >/dev/null || missing="$$missing util-linux"; \
	python3 -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	$(call apt_missing,$(APT_PACKAGES))

test: deps test-rust $(if $(wildcard mk/chart.mk),chart-test)

# The Kubernetes tests need the control plane (kube-bin) and render the
# chart with the chart's Python environment (chart-venv).
test-rust: kube-bin chart-venv
	@if command -v cargo-nextest >/dev/null; then \
	  $(CARGO) nextest run --workspace --no-fail-fast; \
	else \
	  $(CARGO) test --workspace --no-fail-fast; \
	fi

# The proxy is benchmarked as a release binary beside nginx; both are
# started by the bench itself on loopback.
bench: bench-deps kube-bin
	$(CARGO) bench

bench-deps:
	@missing=""; \
	[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || missing="$$missing nginx-light"; \
	command -v valgrind >/dev/null || missing="$$missing valgrind"; \
	$(call apt_missing,$(BENCH_PACKAGES))

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
