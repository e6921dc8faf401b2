"""Renders the chart with Helm's own Go SDK and gives the checks what they need.

Shared by the pytest checks and by `manifests.py` (which writes deploy/), so
the committed manifests and the tested render come from the same code.
"""

from __future__ import annotations

import base64
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "srs-proxy"
VALUES_DIR = Path(__file__).resolve().parent / "values"
CRD_FILE = "originpools.srsproxy.io.yaml"

# The release the tests install: a name without the chart's name, so the
# "<release>-srs-proxy" naming path is exercised, in a non-default namespace.
RELEASE = "media"
NAMESPACE = "streaming"


def value_sets() -> list[str]:
    """Names of the value files under tests/chart/values, default first."""
    names = sorted(p.stem for p in VALUES_DIR.glob("*.yaml"))
    names.remove("default")
    return ["default", *names]


@functools.cache
def load_values(name: str) -> dict[str, Any]:
    return yaml.safe_load((VALUES_DIR / f"{name}.yaml").read_text()) or {}


@dataclass
class Rendered:
    """One render of the chart."""

    values: dict[str, Any]
    """The merged values (chart defaults + overrides), as Helm saw them."""
    namespace: str
    templates: dict[str, str]
    """Template path → rendered text, NOTES.txt included."""
    objects: list[dict[str, Any]] = field(default_factory=list)
    """Every non-empty YAML document, in template order."""

    @property
    def notes(self) -> str:
        return next((t for n, t in self.templates.items() if n.endswith("NOTES.txt")), "")

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
        return found[0]

    def component(self, component: str) -> list[dict[str, Any]]:
        return [
            o
            for o in self.objects
            if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
        ]

    def workloads(self) -> list[dict[str, Any]]:
        return self.of_kind("Deployment")

    def proxy_deployment(self) -> dict[str, Any]:
        found = [d for d in self.workloads() if containers(d)[0]["name"] == "proxy"]
        assert len(found) == 1, "expected exactly one proxy Deployment"
        return found[0]

    def proxy_container(self) -> dict[str, Any]:
        return containers(self.proxy_deployment())[0]

    def proxy_env(self) -> dict[str, str]:
        """The proxy container's environment with every reference resolved
        the way the kubelet would resolve it in this namespace."""
        return resolve_env(self.proxy_container().get("env", []), self)


def render(values: dict[str, Any] | None = None, *, release: str = RELEASE, namespace: str = NAMESPACE) -> Rendered:
    with helm.Chart.load(CHART) as chart:
        merged = chart.merge_values(values or {})
        templates = chart.render(values or {}, name=release, namespace=namespace, is_install=True)
    rendered = Rendered(values=merged, namespace=namespace, templates=templates)
    for name in sorted(templates):
        if name.endswith(".txt"):
            continue
        for doc in yaml.safe_load_all(templates[name]):
            if doc:
                rendered.objects.append(doc)
    return rendered


@functools.cache
def render_set(name: str) -> Rendered:
    """Renders a named value set once per test session."""
    return render(load_values(name))


def chart_crd() -> dict[str, Any]:
    return yaml.safe_load((CHART / "crds" / CRD_FILE).read_text())


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return workload["spec"]["template"]["spec"]["containers"]


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"].get("labels", {})


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Label-selector semantics for matchLabels/matchExpressions or a plain
    Service selector map. An empty selector selects nothing here: none of the
    chart's selectors may be empty."""
    if not selector:
        return False
    structured = "matchLabels" in selector or "matchExpressions" in selector
    match_labels = selector.get("matchLabels", {}) if structured else selector
    for key, value in match_labels.items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []) if structured else []:
        key, op, vals = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in vals:
            return False
        if op == "NotIn" and labels.get(key) in vals:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def container_port(container: dict[str, Any], port: int | str) -> dict[str, Any]:
    """The container port a probe or Service targetPort refers to, by name or number."""
    for p in container.get("ports", []):
        if p.get("name") == port or p["containerPort"] == port:
            return p
    raise AssertionError(f"container {container['name']} has no port {port!r}")


def resolve_env(env: list[dict[str, Any]], rendered: Rendered) -> dict[str, str]:
    out: dict[str, str] = {}
    for var in env:
        if "value" in var:
            out[var["name"]] = str(var["value"])
        elif "valueFrom" in var:
            out[var["name"]] = resolve_value_from(var["name"], var["valueFrom"], rendered)
        else:
            out[var["name"]] = ""
    return out


def resolve_value_from(name: str, ref: dict[str, Any], rendered: Rendered) -> str:
    if "fieldRef" in ref:
        path = ref["fieldRef"]["fieldPath"]
        assert path == "metadata.namespace", f"{name}: unexpected fieldRef {path}"
        return rendered.namespace
    if "secretKeyRef" in ref:
        sel = ref["secretKeyRef"]
        secret = rendered.get("Secret", sel["name"])
        if sel["key"] in secret.get("stringData", {}):
            return str(secret["stringData"][sel["key"]])
        return base64.b64decode(secret["data"][sel["key"]]).decode()
    raise AssertionError(f"{name}: unsupported valueFrom {ref}")


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def go_duration_seconds(text: str) -> float:
    """Seconds in a Go duration string such as "20s", "1m30s" or "1.5h"."""
    parts = _DURATION.findall(text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a Go duration: {text!r}"
    return sum(float(n) * _UNIT[u] for n, u in parts)


def endpoint_port(text: str) -> int:
    """The port of a listener value: "12025", ":12025" or "ip:port"."""
    return int(text.rsplit(":", 1)[-1])


def documents(text: str) -> Iterator[str]:
    """Splits a rendered template into its YAML documents, comments kept."""
    chunk: list[str] = []
    for line in text.splitlines():
        if line.strip() == "---":
            yield "\n".join(chunk)
            chunk = []
        else:
            chunk.append(line)
    yield "\n".join(chunk)


class Yaml12Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where `off`/`on`/`yes`/`no` are booleans; the
    proxy prints YAML 1.2, where they are strings (`discovery: off`)."""


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
