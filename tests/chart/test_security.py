"""The chart deploys the proxy safe to expose: the system API needs a bearer
token that the proxy and the heartbeating origins share through one Secret,
a NetworkPolicy admits the system API port only from the origins and the
monitoring namespace, and the public Service never carries that port."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from rendering import Rendered, containers, pod_labels, render, selects
from test_consistency import check_config, workload

TOKEN_VARS = ("PROXY_HTTP_API_AUTH_ENABLED", "PROXY_HTTP_API_AUTH_TYPE", "PROXY_HTTP_API_AUTH_TOKEN")


def env_entry(container: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((e for e in container.get("env", []) if e["name"] == name), None)


def secret_ref(container: dict[str, Any], name: str) -> tuple[str, str]:
    entry = env_entry(container, name)
    assert entry, f"{name} is not set"
    ref = entry["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


def test_the_proxy_requires_a_token_from_a_generated_secret(rendered: Rendered) -> None:
    env = rendered.proxy_env()
    assert env["PROXY_HTTP_API_AUTH_ENABLED"] == "on"
    assert env["PROXY_HTTP_API_AUTH_TYPE"] == "bearer"
    name, key = secret_ref(rendered.proxy_container(), "PROXY_HTTP_API_AUTH_TOKEN")
    secret = rendered.get("Secret", name)
    token = base64.b64decode(secret["data"][key]).decode()
    assert len(token) >= 32 and token.isalnum(), "a long random token"
    # The token is never in the rendered env as a literal.
    assert not any(token in str(e.get("value", "")) for e in rendered.proxy_container()["env"])
    result = check_config(env)
    assert result.returncode == 0, result.stderr
    assert token not in result.stdout, "--check-config printed the token"


def test_a_fresh_token_per_install() -> None:
    first, second = render(), render()
    token = lambda r: r.get("Secret", "media-srs-proxy-api-token")["data"]["token"]  # noqa: E731
    assert token(first) != token(second)


def test_heartbeating_origins_send_the_same_token(rendered: Rendered) -> None:
    origin = containers(workload(rendered, "origin"))[0]
    heartbeat = rendered.values["discovery"]["mode"] == "off"
    if not heartbeat:
        assert env_entry(origin, "SRS_HEARTBEAT_AUTH_TOKEN") is None, "origins do not heartbeat"
        return
    env = {e["name"]: e.get("value") for e in origin["env"]}
    assert env["SRS_HEARTBEAT_AUTH_ENABLED"] == "on"
    assert env["SRS_HEARTBEAT_AUTH_TYPE"] == "bearer"
    assert secret_ref(origin, "SRS_HEARTBEAT_AUTH_TOKEN") == secret_ref(
        rendered.proxy_container(), "PROXY_HTTP_API_AUTH_TOKEN"
    )


def test_an_existing_secret_is_referenced_not_generated() -> None:
    rendered = render({"discovery": {"mode": "off"}, "proxy": {"apiAuth": {"existingSecret": "ops-token", "existingSecretKey": "bearer"}}})
    assert not rendered.of_kind("Secret") or all(
        "api-token" not in s["metadata"]["name"] for s in rendered.of_kind("Secret")
    )
    assert secret_ref(rendered.proxy_container(), "PROXY_HTTP_API_AUTH_TOKEN") == ("ops-token", "bearer")
    origin = containers(workload(rendered, "origin"))[0]
    assert secret_ref(origin, "SRS_HEARTBEAT_AUTH_TOKEN") == ("ops-token", "bearer")


def test_auth_off_renders_no_token() -> None:
    rendered = render({"discovery": {"mode": "off"}, "proxy": {"apiAuth": {"enabled": False}}})
    env = rendered.proxy_env()
    assert not any(v in env for v in TOKEN_VARS)
    assert not [s for s in rendered.of_kind("Secret") if "api-token" in s["metadata"]["name"]]
    origin = containers(workload(rendered, "origin"))[0]
    assert env_entry(origin, "SRS_HEARTBEAT_AUTH_ENABLED") is None


def test_protected_metrics_are_scraped_with_the_token() -> None:
    rendered = render({"proxy": {"apiAuth": {"protectMetrics": True}}, "metrics": {"serviceMonitor": {"enabled": True}}})
    assert rendered.proxy_env()["PROXY_HTTP_API_AUTH_METRICS"] == "on"
    [monitor] = rendered.of_kind("ServiceMonitor")
    auth = monitor["spec"]["endpoints"][0]["authorization"]
    assert auth["type"] == "Bearer"
    assert (auth["credentials"]["name"], auth["credentials"]["key"]) == secret_ref(
        rendered.proxy_container(), "PROXY_HTTP_API_AUTH_TOKEN"
    )
    import helm_python as helm

    with pytest.raises(helm.HelmRenderError, match="protectMetrics"):
        render({"proxy": {"apiAuth": {"enabled": False, "protectMetrics": True}}})


def proxy_policy(rendered: Rendered) -> dict[str, Any]:
    proxy_labels = pod_labels(rendered.proxy_deployment())
    found = [p for p in rendered.of_kind("NetworkPolicy") if selects(p["spec"]["podSelector"], proxy_labels)]
    assert len(found) == 1, "one NetworkPolicy selects the proxy pods"
    return found[0]


def test_the_system_api_port_admits_only_origins_and_monitoring(rendered: Rendered) -> None:
    policy = proxy_policy(rendered)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = policy["spec"]["ingress"]
    proxy = rendered.proxy_container()
    named = {p["name"]: p for p in proxy["ports"]}
    system_rules = [r for r in rules if any(p["port"] == "system" for p in r.get("ports", []))]
    assert len(system_rules) == 1
    [system] = system_rules
    assert [p["port"] for p in system["ports"]] == ["system"], "the system rule opens nothing else"
    origin_labels = pod_labels(workload(rendered, "origin"))
    peers = system["from"]
    assert any("podSelector" in p and selects(p["podSelector"], origin_labels) for p in peers), "origins"
    assert any(
        p.get("namespaceSelector") == {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}} for p in peers
    ), "the monitoring namespace"
    assert all("ipBlock" not in p for p in peers)
    # Every other container port is open to anyone, on its protocol.
    public = [r for r in rules if r is not system]
    assert all("from" not in r for r in public)
    opened = {(p["port"], p["protocol"]) for r in public for p in r["ports"]}
    expected = {(name, p.get("protocol", "TCP")) for name, p in named.items() if name != "system"}
    assert opened == expected


def test_the_policy_can_admit_more_sources_or_be_off() -> None:
    extra = {"ipBlock": {"cidr": "10.20.0.0/16"}}
    rendered = render({"proxy": {"networkPolicy": {"extraFrom": [extra]}}})
    system = next(r for r in proxy_policy(rendered)["spec"]["ingress"] if "from" in r)
    assert extra in system["from"]
    rendered = render({"proxy": {"networkPolicy": {"enabled": False}}})
    proxy_labels = pod_labels(rendered.proxy_deployment())
    assert not [p for p in rendered.of_kind("NetworkPolicy") if selects(p["spec"]["podSelector"], proxy_labels)]


def test_the_public_service_never_carries_the_system_port(rendered: Rendered) -> None:
    system_port = rendered.values["proxy"]["ports"]["system"]
    for service in rendered.of_kind("Service"):
        if service["spec"].get("type") in ("LoadBalancer", "NodePort"):
            for port in service["spec"]["ports"]:
                assert port.get("targetPort") != "system" and port.get("targetPort") != system_port, service
                assert port["name"] != "system"
