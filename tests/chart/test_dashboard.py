"""The Grafana dashboard: valid, built on metrics the proxy really exports,
and covering what an operator looks at during an incident."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from rendering import CHART, REPO

DASHBOARD = CHART / "dashboards" / "srs-proxy.json"
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def expressions() -> list[str]:
    return [t["expr"] for p in panels() for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    names = set()
    for name in re.findall(r"\bsrs_proxy_[a-z_]+", expr):
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name != "srs_proxy_streams_active":
                name = name[: -len(suffix)]
        names.add(name)
    return names


def exported_metric_names() -> str:
    """The proxy's source, where every metric name is registered."""
    return "\n".join(p.read_text() for p in (REPO / "src").rglob("*.rs"))


def test_every_metric_on_the_dashboard_is_exported_by_the_proxy() -> None:
    source = exported_metric_names()
    used = set().union(*(metric_names(e) for e in expressions()))
    assert used, "the dashboard queries no srs_proxy_* metric"
    missing = sorted(
        n for n in used if f'"{n}"' not in source and f'"{n.removeprefix("srs_proxy_")}"' not in source
    )
    assert not missing, f"not registered anywhere in src/: {missing}"


@pytest.mark.parametrize(
    "topic, pattern",
    [
        ("streams", r"srs_proxy_streams_active"),
        ("viewers", r'srs_proxy_connections_active\{[^}]*role="player"'),
        ("publishers", r'srs_proxy_connections_active\{[^}]*role="publisher"'),
        ("throughput", r"rate\(srs_proxy_bytes_relayed_total"),
        ("origins", r"srs_proxy_origins_live"),
        ("claim results", r"by \(result\) \(rate\(srs_proxy_claims_total"),
        ("store latency", r"histogram_quantile\(0\.99, .*srs_proxy_store_operation_seconds_bucket"),
        ("http status", r"by \(status\) \(rate\(srs_proxy_http_requests_total"),
    ],
)
def test_dashboard_covers(topic: str, pattern: str) -> None:
    assert any(re.search(pattern, e) for e in expressions()), f"no panel shows {topic}"


def test_panels_are_well_formed() -> None:
    d = dashboard()
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert d["uid"] and d["title"]
    variables = {v["name"] for v in d["templating"]["list"]}
    for p in panels():
        assert p["datasource"]["uid"] == "${datasource}", f"panel {p['title']!r} hard-codes a data source"
        for t in p["targets"]:
            for var in re.findall(r"\$(\w+)", t["expr"]):
                assert var.startswith("__") or var in variables, f"panel {p['title']!r} uses undefined ${var}"
            assert t["expr"].count("(") == t["expr"].count(")"), f"unbalanced query in {p['title']!r}"
    # No two panels overlap on the 24-column grid.
    cells: dict[tuple[int, int], str] = {}
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
