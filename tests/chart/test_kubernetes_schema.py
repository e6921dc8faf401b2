"""Every rendered object against the Kubernetes OpenAPI schemas (strict: no
unknown fields), and the OriginPool instances against the CRD's own schema."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from rendering import Rendered, chart_crd
from test_render import min_kube_version

# The Kubernetes version the proxy's client is built against (k8s-openapi
# feature v1_34) and the oldest the chart accepts (Chart.yaml kubeVersion).
TARGET_KUBE_VERSION = "1.34"

# Validated elsewhere: OriginPool against its CRD below, ServiceMonitor (a
# prometheus-operator CRD) structurally in test_consistency.
CUSTOM_KINDS = {("srsproxy.io/v1alpha1", "OriginPool"), ("monitoring.coreos.com/v1", "ServiceMonitor")}


def kubernetes_objects(rendered: Rendered) -> list[dict[str, Any]]:
    return [o for o in rendered.objects if (o["apiVersion"], o["kind"]) not in CUSTOM_KINDS]


@pytest.mark.parametrize("kube_version", ["oldest", TARGET_KUBE_VERSION])
def test_objects_match_kubernetes_schemas(rendered: Rendered, kube_version: str) -> None:
    version = min_kube_version() if kube_version == "oldest" else kube_version
    failures = []
    for obj in kubernetes_objects(rendered):
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            failures.append(e.message)
    assert not failures, "\n".join(failures)


def test_the_crd_itself_is_valid() -> None:
    crd = chart_crd()
    kubernetes_validate.validate(crd, TARGET_KUBE_VERSION, strict=True)
    spec = crd["spec"]
    assert (spec["group"], spec["names"]["kind"], spec["names"]["plural"]) == ("srsproxy.io", "OriginPool", "originpools")
    assert "opool" in spec["names"].get("shortNames", [])
    assert spec["scope"] == "Namespaced"
    version = crd_version(crd, "v1alpha1")
    assert version["served"] and version["storage"]
    assert "status" in version.get("subresources", {})


def crd_version(crd: dict[str, Any], name: str) -> dict[str, Any]:
    found = [v for v in crd["spec"]["versions"] if v["name"] == name]
    assert found, f"CRD has no version {name}"
    return found[0]


def structural(schema: Any) -> Any:
    """The CRD schema as the API server applies it, for jsonschema: fields
    not declared are an error (the server would silently prune them, so a
    misspelt field in the chart would be lost), and `nullable` allows null."""
    if isinstance(schema, list):
        return [structural(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: structural(v) for k, v in schema.items()}
    if out.get("type") == "object" and "properties" in out:
        if not out.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in out:
            out["additionalProperties"] = False
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def originpool_schema() -> dict[str, Any]:
    schema = copy.deepcopy(crd_version(chart_crd(), "v1alpha1")["schema"]["openAPIV3Schema"])
    schema = structural(schema)
    # apiVersion, kind and metadata are the API server's, not the CRD's.
    schema.setdefault("properties", {}).update(
        apiVersion={"const": "srsproxy.io/v1alpha1"},
        kind={"const": "OriginPool"},
        metadata={"type": "object"},
    )
    return schema


def test_originpools_match_the_crd(rendered: Rendered) -> None:
    schema = originpool_schema()
    for pool in rendered.of_kind("OriginPool"):
        jsonschema.validate(pool, schema, cls=jsonschema.Draft7Validator)
