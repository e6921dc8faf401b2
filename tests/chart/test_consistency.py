"""The parts of the chart agree with each other and with the proxy:
probes hit the ports the proxy listens on, the env parses with the proxy's
own config loader, discovery finds the port names the origins expose,
selectors select the pods they are meant to, and optional parts appear only
when asked for."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from rendering import (
    CHART,
    REPO,
    Rendered,
    Yaml12Loader,
    chart_crd,
    container_port,
    containers,
    endpoint_port,
    go_duration_seconds,
    pod_labels,
    render_set,
    selects,
)

PROXY_LISTENERS = {
    "PROXY_HTTP_SERVER": ("http", "TCP"),
    "PROXY_RTMP_SERVER": ("rtmp", "TCP"),
    "PROXY_HTTP_API": ("api", "TCP"),
    "PROXY_WEBRTC_SERVER": ("rtc", "UDP"),
    "PROXY_SRT_SERVER": ("srt", "UDP"),
    "PROXY_SYSTEM_API": ("system", "TCP"),
}
# What each protocol is carried over, on the origins and on the public Service.
PROTOCOLS = {"rtmp": "TCP", "http": "TCP", "api": "TCP", "rtc": "UDP", "srt": "UDP"}


def component_of(workload: dict[str, Any]) -> str:
    return pod_labels(workload)["app.kubernetes.io/component"]


def workload(rendered: Rendered, component: str) -> dict[str, Any]:
    found = [w for w in rendered.workloads() if component_of(w) == component]
    assert len(found) == 1, f"expected one {component} workload, found {len(found)}"
    return found[0]


def selected(rendered: Rendered, selector: dict[str, Any]) -> list[str]:
    """Components of the workloads whose pods the selector matches."""
    return sorted(component_of(w) for w in rendered.workloads() if selects(selector, pod_labels(w)))


# --- the proxy's own ports and probes -------------------------------------------------


def test_readiness_probe_is_the_system_api_versions_endpoint(rendered: Rendered) -> None:
    proxy = rendered.proxy_container()
    probe = proxy["readinessProbe"]["httpGet"]
    assert probe["path"] == "/api/v1/versions"
    system_port = endpoint_port(rendered.proxy_env()["PROXY_SYSTEM_API"])
    assert container_port(proxy, probe["port"])["containerPort"] == system_port


def test_liveness_probe_does_not_follow_readiness(rendered: Rendered) -> None:
    # /api/v1/versions answers 503 when the store is down; a liveness probe
    # on it would restart every replica during a Redis outage.
    proxy = rendered.proxy_container()
    liveness = proxy["livenessProbe"]
    assert liveness.get("httpGet", {}).get("path") != "/api/v1/versions"
    port = liveness.get("tcpSocket", liveness.get("httpGet", {})).get("port")
    assert container_port(proxy, port)["containerPort"] == endpoint_port(rendered.proxy_env()["PROXY_SYSTEM_API"])


def test_container_ports_are_the_ports_the_proxy_listens_on(rendered: Rendered) -> None:
    proxy = rendered.proxy_container()
    env = rendered.proxy_env()
    for var, (name, protocol) in PROXY_LISTENERS.items():
        port = container_port(proxy, name)
        assert port["containerPort"] == endpoint_port(env[var]), f"{name} port differs from {var}"
        assert port.get("protocol", "TCP") == protocol, f"{name} must be {protocol}"


def test_termination_grace_covers_the_drain(rendered: Rendered) -> None:
    pod = rendered.proxy_deployment()["spec"]["template"]["spec"]
    env = rendered.proxy_env()
    grace = go_duration_seconds(env["PROXY_GRACE_QUIT_TIMEOUT"])
    force = go_duration_seconds(env["PROXY_FORCE_QUIT_TIMEOUT"])
    pre_stop = rendered.proxy_container().get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    assert force >= grace
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + force


def test_proxy_runs_unprivileged_on_a_read_only_root(rendered: Rendered) -> None:
    pod = rendered.proxy_deployment()["spec"]["template"]["spec"]
    ctx = {**pod.get("securityContext", {}), **rendered.proxy_container().get("securityContext", {})}
    assert ctx.get("runAsNonRoot") is True
    assert ctx.get("readOnlyRootFilesystem") is True
    assert ctx.get("allowPrivilegeEscalation") is False
    assert "ALL" in ctx.get("capabilities", {}).get("drop", [])
    assert rendered.proxy_container().get("resources", {}).get("requests")


# --- the env parses with the proxy's config loader --------------------------------------


def proxy_binary() -> Path:
    path = Path(os.environ.get("SRS_PROXY_BIN", REPO / "target" / "debug" / "srs-proxy"))
    assert path.exists(), f"{path} is missing: run `cargo build --bin srs-proxy` (make chart-test does)"
    return path


def check_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # Nothing from the test's own environment may leak into the check.
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    return subprocess.run(
        [str(proxy_binary()), "--check-config"], env=clean, capture_output=True, text=True, timeout=30
    )


def test_env_is_accepted_by_the_proxy_config_loader(rendered: Rendered) -> None:
    result = check_config(rendered.proxy_env())
    assert result.returncode == 0, f"srs-proxy --check-config exited {result.returncode}:\n{result.stderr}{result.stdout}"

    # Accepted is not enough: a misspelt variable is silently ignored, so the
    # effective configuration must be what the chart meant.
    effective = yaml.load(result.stdout, Loader=Yaml12Loader)
    values = rendered.values
    proxy = rendered.proxy_container()
    for var, (name, _) in PROXY_LISTENERS.items():
        key = var.removeprefix("PROXY_").lower()
        assert endpoint_port(str(effective[key])) == container_port(proxy, name)["containerPort"], key
    readiness = proxy["readinessProbe"]["httpGet"]["port"]
    assert endpoint_port(str(effective["system_api"])) == container_port(proxy, readiness)["containerPort"]
    assert effective["load_balancer_type"] == values["proxy"]["store"]
    assert effective["balance_policy"] == values["proxy"]["balancePolicy"]
    assert effective["log_format"] == values["proxy"]["logFormat"]
    assert go_duration_seconds(effective["grace_quit_timeout"]) == values["proxy"]["graceQuitTimeoutSeconds"]
    assert go_duration_seconds(effective["force_quit_timeout"]) == values["proxy"]["forceQuitTimeoutSeconds"]
    k8s = effective["kubernetes"]
    assert k8s["discovery"] == values["discovery"]["mode"]
    if values["discovery"]["mode"] != "off":
        assert k8s["namespace"] == rendered.namespace
    if values["discovery"]["mode"] == "service":
        assert rendered.get("Service", k8s["service"])
    if values["proxy"]["store"] == "redis":
        if values["redis"]["external"]["url"]:
            # Compared without credentials, which the proxy may mask.
            want, got = urlsplit(values["redis"]["external"]["url"]), urlsplit(effective["redis"]["url"])
            assert (got.scheme, got.hostname, got.port, got.path) == (want.scheme, want.hostname, want.port, want.path)
        else:
            redis = next(s for s in rendered.of_kind("Service") if s["metadata"]["name"] == effective["redis"]["host"])
            assert effective["redis"]["port"] == redis["spec"]["ports"][0]["port"]
        if values["redis"]["prefix"]:
            assert effective["redis"]["prefix"] == values["redis"]["prefix"]
        if values["redis"].get("db") is not None:
            assert effective["redis"]["db"] == values["redis"]["db"]
    assert effective["default_backend"]["enabled"] == values["proxy"]["defaultBackend"]["enabled"]


def test_config_loader_check_can_fail() -> None:
    # The check above is only worth something if a bad value makes it fail.
    env = {**render_set("default").proxy_env(), "PROXY_LOAD_BALANCER_TYPE": "cassandra"}
    result = check_config(env)
    assert result.returncode == 64
    assert "load_balancer_type" in (result.stderr + result.stdout).lower() or "PROXY_LOAD_BALANCER_TYPE" in (
        result.stderr + result.stdout
    )


# --- discovery ---------------------------------------------------------------------------


def crd_default_port_names() -> dict[str, str]:
    version = next(v for v in chart_crd()["spec"]["versions"] if v["name"] == "v1alpha1")
    ports = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["ports"]["properties"]
    return {proto: ports[proto].get("default", proto) for proto in PROTOCOLS}


def assert_service_carries(rendered: Rendered, service_name: str, port_names: dict[str, str]) -> None:
    """The origin Service has a port with each name discovery looks for, on
    the right protocol, and each resolves to an origin container port."""
    service = rendered.get("Service", service_name)
    assert service["spec"].get("clusterIP") == "None", "discovery needs a headless origin Service"
    origin = containers(workload(rendered, "origin"))[0]
    by_name = {p.get("name"): p for p in service["spec"]["ports"]}
    for proto, name in port_names.items():
        assert name in by_name, f"{proto}: discovery expects port {name!r} on Service {service_name}"
        port = by_name[name]
        assert port.get("protocol", "TCP") == PROTOCOLS[proto], f"{proto} port must be {PROTOCOLS[proto]}"
        target = container_port(origin, port.get("targetPort", port["port"]))
        assert target.get("protocol", "TCP") == PROTOCOLS[proto]
    assert selected(rendered, service["spec"]["selector"]) == ["origin"]


def test_originpool_points_at_the_origin_ports(rendered: Rendered) -> None:
    if rendered.values["discovery"]["mode"] != "originpool":
        assert not rendered.of_kind("OriginPool")
        return
    [pool] = rendered.of_kind("OriginPool")
    names = {**crd_default_port_names(), **pool["spec"].get("ports", {})}
    assert_service_carries(rendered, pool["spec"]["service"], names)
    env = rendered.proxy_env()
    assert env["PROXY_K8S_DISCOVERY"] == "originpool"
    assert env["PROXY_K8S_NAMESPACE"] == pool["metadata"]["namespace"] == rendered.namespace


def test_service_discovery_points_at_the_origin_service(rendered: Rendered) -> None:
    env = rendered.proxy_env()
    if rendered.values["discovery"]["mode"] != "service":
        assert "PROXY_K8S_SERVICE" not in env
        return
    assert env["PROXY_K8S_DISCOVERY"] == "service"
    assert env["PROXY_K8S_NAMESPACE"] == rendered.namespace
    assert not rendered.of_kind("OriginPool")
    # Without an OriginPool the proxy uses the default port names.
    assert_service_carries(rendered, env["PROXY_K8S_SERVICE"], crd_default_port_names())


def test_heartbeat_registration_when_discovery_is_off(rendered: Rendered) -> None:
    env = rendered.proxy_env()
    config = next(c for c in rendered.of_kind("ConfigMap") if "srs.conf" in c.get("data", {}))["data"]["srs.conf"]
    if rendered.values["discovery"]["mode"] != "off":
        assert "heartbeat" not in config
        return
    assert env["PROXY_K8S_DISCOVERY"] == "off"
    system = next(s for s in rendered.of_kind("Service") if any(p["name"] == "system" for p in s["spec"]["ports"]))
    port = next(p["port"] for p in system["spec"]["ports"] if p["name"] == "system")
    url = f"http://{system['metadata']['name']}.{rendered.namespace}.svc:{port}/api/v1/srs/register"
    assert url in config
    assert selected(rendered, system["spec"]["selector"]) == ["proxy"]


# --- RBAC ----------------------------------------------------------------------------------


def granted(rendered: Rendered) -> set[tuple[str, str, str]]:
    out = set()
    for role in rendered.of_kind("Role"):
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        out.add((group, resource, verb))
    return out


def expand(group: str, resource: str, verbs: str) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for verb in verbs.split()}


def test_rbac_grants_exactly_what_discovery_uses(rendered: Rendered) -> None:
    mode = rendered.values["discovery"]["mode"]
    expected = set()
    if mode in ("originpool", "service"):
        expected |= expand("discovery.k8s.io", "endpointslices", "get list watch")
    if mode == "originpool":
        expected |= expand("srsproxy.io", "originpools", "get list watch")
        expected |= expand("srsproxy.io", "originpools/status", "get patch update")
        expected |= expand("coordination.k8s.io", "leases", "get create update patch")
    assert granted(rendered) == expected
    assert not rendered.of_kind("ClusterRole") and not rendered.of_kind("ClusterRoleBinding")

    pod = rendered.proxy_deployment()["spec"]["template"]["spec"]
    assert pod.get("automountServiceAccountToken") is (mode != "off")
    for binding in rendered.of_kind("RoleBinding"):
        assert binding["roleRef"]["kind"] == "Role"
        rendered.get("Role", binding["roleRef"]["name"])
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": rendered.namespace}
        ]
    if rendered.values["serviceAccount"]["create"]:
        rendered.get("ServiceAccount", pod["serviceAccountName"])


# --- selectors -----------------------------------------------------------------------------


def test_workload_selectors_match_their_own_pods(rendered: Rendered) -> None:
    for w in rendered.workloads():
        assert selects(w["spec"]["selector"], pod_labels(w)), f"Deployment/{w['metadata']['name']}"
        # ... and no other workload's pods, or two ReplicaSets would fight.
        assert selected(rendered, w["spec"]["selector"]) == [component_of(w)]


def expected_component(obj: dict[str, Any]) -> str:
    return obj["metadata"]["labels"]["app.kubernetes.io/component"]


def test_services_select_the_pods_they_front(rendered: Rendered) -> None:
    for service in rendered.of_kind("Service"):
        name = service["metadata"]["name"]
        assert selected(rendered, service["spec"]["selector"]) == [expected_component(service)], name
        pods = workload(rendered, expected_component(service))
        container = containers(pods)[0]
        for port in service["spec"]["ports"]:
            target = container_port(container, port.get("targetPort", port["port"]))
            assert target.get("protocol", "TCP") == port.get("protocol", "TCP"), f"{name}:{port['name']}"


def test_budgets_and_policies_select_their_component(rendered: Rendered) -> None:
    for pdb in rendered.of_kind("PodDisruptionBudget"):
        assert selected(rendered, pdb["spec"]["selector"]) == [expected_component(pdb)]
    for policy in rendered.of_kind("NetworkPolicy"):
        component = expected_component(policy)
        assert selected(rendered, policy["spec"]["podSelector"]) == [component]
        pods = containers(workload(rendered, component))[0]
        for rule in policy["spec"]["ingress"]:
            for port in rule["ports"]:
                container_port(pods, port["port"])
        if component == "redis":
            sources = [f["podSelector"] for rule in policy["spec"]["ingress"] for f in rule["from"]]
            assert [selected(rendered, s) for s in sources] == [["proxy"]]
        # The proxy's policy is checked in test_security.py.


def test_public_service_exposes_every_protocol(rendered: Rendered) -> None:
    public = [
        s
        for s in rendered.of_kind("Service")
        if expected_component(s) == "proxy" and not any(p["name"] == "system" for p in s["spec"]["ports"])
    ]
    exposed = {p["name"]: p for s in public for p in s["spec"]["ports"]}
    assert set(exposed) == set(PROTOCOLS), "the public Service(s) must carry rtmp, http, api, rtc and srt"
    for name, port in exposed.items():
        assert port["protocol"] == PROTOCOLS[name]
        assert port["targetPort"] == name
    for s in public:
        assert s["spec"]["type"] == rendered.values["service"]["type"]
    # Clients send WebRTC media to the port the proxy announces in its answers.
    assert int(rendered.proxy_env()["PROXY_WEBRTC_PUBLIC_PORT"]) == exposed["rtc"]["port"]
    # The system API (register, metrics) is never public.
    assert "system" not in exposed


def test_autoscaler_owns_the_replica_count(rendered: Rendered) -> None:
    deployment = rendered.proxy_deployment()
    hpas = rendered.of_kind("HorizontalPodAutoscaler")
    if not rendered.values["proxy"]["autoscaling"]["enabled"]:
        assert not hpas
        assert deployment["spec"]["replicas"] == rendered.values["proxy"]["replicas"]
        return
    [hpa] = hpas
    assert "replicas" not in deployment["spec"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert rendered.proxy_env()["PROXY_LOAD_BALANCER_TYPE"] == "redis", "autoscaled replicas must share state"


# --- Redis ---------------------------------------------------------------------------------


def test_store_and_redis_objects_agree(rendered: Rendered) -> None:
    env = rendered.proxy_env()
    store = rendered.values["proxy"]["store"]
    external = rendered.values["redis"]["external"]["url"]
    assert env["PROXY_LOAD_BALANCER_TYPE"] == store
    redis_objects = rendered.component("redis")
    redis_env = {k for k in env if k.startswith("PROXY_REDIS_")}
    if store == "memory":
        assert not redis_objects, [f"{o['kind']}/{o['metadata']['name']}" for o in redis_objects]
        assert not redis_env
        assert not any("redis" in o["metadata"]["name"] for o in rendered.objects)
        assert rendered.proxy_deployment()["spec"]["replicas"] == 1
    elif external:
        assert not redis_objects
        assert env["PROXY_REDIS_URL"] == external
        assert "PROXY_REDIS_HOST" not in env
    else:
        service = next(s for s in rendered.of_kind("Service") if expected_component(s) == "redis")
        assert env["PROXY_REDIS_HOST"] == service["metadata"]["name"]
        assert int(env["PROXY_REDIS_PORT"]) == service["spec"]["ports"][0]["port"]
        assert selected(rendered, service["spec"]["selector"]) == ["redis"]
        password = rendered.values["redis"]["password"]
        assert env.get("PROXY_REDIS_PASSWORD", "") == password
        if password:
            redis = containers(workload(rendered, "redis"))[0]
            assert "--requirepass" in redis["args"]


# --- monitoring ----------------------------------------------------------------------------


def test_service_monitor_only_when_enabled(rendered: Rendered) -> None:
    monitors = rendered.of_kind("ServiceMonitor")
    if not rendered.values["metrics"]["serviceMonitor"]["enabled"]:
        assert not monitors
        return
    [monitor] = monitors
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    services = [s for s in rendered.of_kind("Service") if selects(monitor["spec"]["selector"], s["metadata"]["labels"])]
    assert len(services) == 1, "the ServiceMonitor must select exactly the system Service"
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    [port] = [p for p in services[0]["spec"]["ports"] if p["name"] == endpoint["port"]]
    proxy = rendered.proxy_container()
    assert container_port(proxy, port["targetPort"])["containerPort"] == endpoint_port(
        rendered.proxy_env()["PROXY_SYSTEM_API"]
    )
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [rendered.namespace]


def test_dashboard_configmap_only_when_enabled(rendered: Rendered) -> None:
    maps = [c for c in rendered.of_kind("ConfigMap") if "grafana_dashboard" in c["metadata"].get("labels", {})]
    if not rendered.values["metrics"]["dashboard"]["enabled"]:
        assert not maps
        return
    [dashboard] = maps
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    [(name, content)] = dashboard["data"].items()
    assert name.endswith(".json")
    assert json.loads(content) == json.loads((CHART / "dashboards" / "srs-proxy.json").read_text())


# --- NOTES ---------------------------------------------------------------------------------


def test_notes_print_publish_and_play_commands(rendered: Rendered) -> None:
    notes = rendered.notes
    ports = rendered.values["service"]["ports"]
    public = rendered.proxy_deployment()["metadata"]["name"]
    assert f"service {public}" in notes or f"service/{public}" in notes
    assert "ffmpeg " in notes and f"-f flv rtmp://$PROXY_HOST:{ports['rtmp']}/live/livestream" in notes
    assert f"http://$PROXY_HOST:{ports['http']}/live/livestream.flv" in notes
    assert f"http://$PROXY_HOST:{ports['http']}/live/livestream.m3u8" in notes
    assert f"$PROXY_HOST':{ports['srt']}?streamid=#!::r=live/livestream,m=publish" in notes
    assert f"$PROXY_HOST':{ports['srt']}?streamid=#!::r=live/livestream,m=request" in notes
    # Every publish command is self-contained: a generated source, no file.
    assert notes.count("-f lavfi -i testsrc") == 3 and "input.mp4" not in notes
    assert rendered.namespace in notes
    api = ports["api"]
    assert f"http://$PROXY_HOST:{api}/rtc/v1/whep/?app=live&stream=livestream" in notes
    assert "-f whip" in notes and f"$PROXY_HOST':{api}/rtc/v1/whip/?app=live&stream=livestream" in notes
    candidate = rendered.values["proxy"]["webrtc"]["candidate"]
    if not candidate and rendered.values["origin"]["candidate"] == "*":
        assert "--set proxy.webrtc.candidate=$PROXY_HOST" in notes
    if candidate:
        assert rendered.proxy_env()["PROXY_WEBRTC_CANDIDATE"] == candidate
        assert "proxy.webrtc.candidate is not set" not in notes


@pytest.mark.parametrize("component", ["proxy", "origin", "redis"])
def test_pods_do_not_mount_tokens_they_do_not_need(rendered: Rendered, component: str) -> None:
    found = [w for w in rendered.workloads() if component_of(w) == component]
    for w in found:
        automount = w["spec"]["template"]["spec"].get("automountServiceAccountToken")
        if component == "proxy":
            assert automount is (rendered.values["discovery"]["mode"] != "off")
        else:
            assert automount is False
