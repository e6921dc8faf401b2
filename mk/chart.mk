# Helm chart, plain manifests (deploy/) and Grafana dashboard.
#
#   make chart-test   lint, render and check the chart (part of `make test`)
#   make manifests    regenerate deploy/, copy crds/ into the chart and the
#                     dashboard into docs/
#
# The checks are Python (pytest) on Helm's own Go SDK, loaded as a native
# library from the helm-python-sdk wheel: no helm binary, no cluster. The
# packages are pinned in requirements-chart.txt and live in .venv.

CHART_VENV := .venv
CHART_PYTHON := $(CHART_VENV)/bin/python
# Records which requirements .venv holds; reinstalls when they change.
CHART_STAMP := $(CHART_VENV)/.requirements-chart.txt
CHART_PYTEST := PYTHONDONTWRITEBYTECODE=1 $(CHART_PYTHON) -m pytest -p no:cacheprovider

.PHONY: chart-test manifests chart-venv

$(CHART_STAMP): requirements-chart.txt
	test -x $(CHART_PYTHON) || python3 -m venv $(CHART_VENV)
	$(CHART_PYTHON) -m pip install --quiet --disable-pip-version-check -r requirements-chart.txt
	cp requirements-chart.txt $@

chart-venv: $(CHART_STAMP)

# The env check runs `srs-proxy --check-config`, so the binary is built first
# (a no-op when `cargo test` has already built it).
chart-test: $(CHART_STAMP)
	cargo build --quiet --bin srs-proxy
	$(CHART_PYTEST) tests/chart

manifests: $(CHART_STAMP)
	PYTHONDONTWRITEBYTECODE=1 $(CHART_PYTHON) tests/chart/manifests.py
