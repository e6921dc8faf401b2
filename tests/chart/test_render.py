"""The chart lints cleanly and renders with every value set; values that would
deploy something broken are refused at install time, not discovered later."""

from __future__ import annotations

import re

import helm_python as helm
import pytest

from rendering import CHART, Rendered, render

# Lint findings: 1 info, 2 warning, 3 error. Strict lint fails on warnings.
WARNING = 2


def min_kube_version() -> str:
    with helm.Chart.load(CHART) as chart:
        constraint = chart.metadata["kubeVersion"]
    found = re.match(r">=\s*v?(\d+\.\d+)", constraint)
    assert found, f"kubeVersion {constraint!r} has no lower bound"
    return found.group(1)


@pytest.mark.parametrize("kube_version", ["oldest", "v1.34.0"])
def test_lint_strict(overrides: dict, kube_version: str) -> None:
    version = f"v{min_kube_version()}.0" if kube_version == "oldest" else kube_version
    report = helm.lint(CHART, overrides, strict=True, namespace="streaming", kube_version=version)
    problems = [m for m in report["messages"] if m["severity"] >= WARNING]
    assert not report["errors"] and not problems, problems or report["errors"]


def test_objects_are_named_and_namespaced(rendered: Rendered) -> None:
    seen = set()
    for obj in rendered.objects:
        meta = obj["metadata"]
        key = (obj["apiVersion"], obj["kind"], meta["name"])
        assert key not in seen, f"{key} rendered twice"
        seen.add(key)
        assert meta.get("namespace") == rendered.namespace, f"{obj['kind']}/{meta['name']} not in the release namespace"
        labels = meta.get("labels", {})
        for label in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by"):
            assert label in labels, f"{obj['kind']}/{meta['name']} lacks {label}"


def test_memory_store_refuses_more_than_one_replica() -> None:
    with pytest.raises(helm.HelmRenderError, match="proxy.store=memory"):
        render({"proxy": {"store": "memory", "replicas": 2}})
    with pytest.raises(helm.HelmRenderError, match="proxy.store=memory"):
        render({"proxy": {"store": "memory", "replicas": 1, "autoscaling": {"enabled": True}}})


def test_termination_grace_shorter_than_drain_is_refused() -> None:
    with pytest.raises(helm.HelmRenderError, match="terminationGracePeriodSeconds"):
        render({"proxy": {"forceQuitTimeoutSeconds": 30, "terminationGracePeriodSeconds": 29}})
    with pytest.raises(helm.HelmRenderError, match="forceQuitTimeoutSeconds"):
        render({"proxy": {"graceQuitTimeoutSeconds": 40, "forceQuitTimeoutSeconds": 30}})


def test_originpool_without_origins_is_refused() -> None:
    with pytest.raises(helm.HelmRenderError, match="origin.enabled=false"):
        render({"origin": {"enabled": False}})


@pytest.mark.parametrize(
    "values, path",
    [
        ({"proxy": {"store": "redis-cluster"}}, "/proxy/store"),
        ({"proxy": {"replicas": "two"}}, "/proxy/replicas"),
        ({"discovery": {"mode": "endpoints"}}, "/discovery/mode"),
        ({"proxy": {"balancePolicy": "round-robin"}}, "/proxy/balancePolicy"),
        ({"redis": {"external": {"url": "http://redis:6379"}}}, "/redis/external/url"),
        ({"service": {"ports": {"rtmp": 70000}}}, "/service/ports/rtmp"),
        ({"proxy": {"replicaCount": 3}}, "replicaCount"),
    ],
)
def test_values_schema_rejects(values: dict, path: str) -> None:
    with pytest.raises(helm.HelmValuesError) as err:
        render(values)
    assert path in str(err.value)
