"""Files that exist in two places stay identical, and deploy/ stays the
chart's default render. `make manifests` fixes all three."""

from __future__ import annotations

import difflib
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from manifests import CHART_CRD, CHART_DASHBOARD, DEPLOY, DOCS_DASHBOARD, TOP_LEVEL_CRD, generate
from rendering import REPO
from test_kubernetes_schema import TARGET_KUBE_VERSION, originpool_schema

FIX = "run `make manifests` and commit the result"


def diff(expected: str, actual: str, name: str) -> str:
    lines = difflib.unified_diff(
        actual.splitlines(), expected.splitlines(), f"{name} (committed)", f"{name} (expected)", lineterm="", n=1
    )
    return "\n".join(list(lines)[:40])


def test_deploy_is_the_default_render() -> None:
    expected = generate()
    committed = {p.name: p.read_text() for p in DEPLOY.glob("*.yaml")}
    assert sorted(committed) == sorted(expected), f"deploy/ files differ from the generated set: {FIX}"
    for name, text in expected.items():
        assert committed[name] == text, f"deploy/{name} drifted from the chart ({FIX}):\n{diff(text, committed[name], name)}"


def test_chart_crd_is_the_generated_crd() -> None:
    assert TOP_LEVEL_CRD.exists(), (
        f"{TOP_LEVEL_CRD.relative_to(REPO)} is missing: generate it with `cargo run --bin crdgen`, then {FIX}"
    )
    generated, shipped = TOP_LEVEL_CRD.read_text(), CHART_CRD.read_text()
    assert shipped == generated, f"the chart's CRD differs from crds/ ({FIX}):\n{diff(generated, shipped, CHART_CRD.name)}"


def test_docs_dashboard_is_the_chart_dashboard() -> None:
    assert DOCS_DASHBOARD.read_text() == CHART_DASHBOARD.read_text(), f"docs/grafana-dashboard.json drifted: {FIX}"


def deploy_objects() -> list[dict[str, Any]]:
    objects = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        objects.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return objects


def test_deploy_objects_are_valid_and_namespaced() -> None:
    objects = deploy_objects()
    [namespace] = [o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"]
    for obj in objects:
        if obj["kind"] == "OriginPool":
            jsonschema.validate(obj, originpool_schema(), cls=jsonschema.Draft7Validator)
            continue
        kubernetes_validate.validate(obj, TARGET_KUBE_VERSION, strict=True)
        if obj["kind"] not in ("Namespace", "CustomResourceDefinition"):
            assert obj["metadata"]["namespace"] == namespace, f"{obj['kind']}/{obj['metadata']['name']}"


def test_deploy_has_an_example_originpool_for_its_origins() -> None:
    objects = deploy_objects()
    [pool] = [o for o in objects if o["kind"] == "OriginPool"]
    services = {o["metadata"]["name"] for o in objects if o["kind"] == "Service"}
    assert pool["spec"]["service"] in services
    assert any(o["kind"] == "CustomResourceDefinition" for o in objects)
