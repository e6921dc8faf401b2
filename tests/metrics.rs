//! `/metrics` after real traffic: the counters move and the exposition is
//! valid Prometheus text.

mod support;

use std::collections::HashMap;

use bytes::Bytes;
use http::{Method, StatusCode};
use support::client::{self, get, read_n};
use support::origin::FakeOrigin;
use support::proxy::{test_config, TestProxy};

/// Strict line check of the text format: `# HELP`/`# TYPE` lines, and
/// samples `name{label="value",…} number`.
fn check_line(line: &str) -> Result<(), String> {
    if line.is_empty() {
        return Ok(());
    }
    if let Some(rest) = line.strip_prefix("# ") {
        let mut parts = rest.splitn(3, ' ');
        let kind = parts.next().unwrap_or("");
        let name = parts.next().unwrap_or("");
        if !matches!(kind, "HELP" | "TYPE") || !valid_name(name) {
            return Err(format!("bad comment line: {line}"));
        }
        if kind == "TYPE"
            && !matches!(
                parts.next(),
                Some("counter" | "gauge" | "histogram" | "summary" | "untyped")
            )
        {
            return Err(format!("bad TYPE: {line}"));
        }
        return Ok(());
    }
    let (series, value) = line.rsplit_once(' ').ok_or_else(|| format!("no value: {line}"))?;
    if value.parse::<f64>().is_err() && !matches!(value, "+Inf" | "-Inf" | "NaN") {
        return Err(format!("bad value: {line}"));
    }
    let (name, labels) = match series.split_once('{') {
        Some((n, l)) => (
            n,
            Some(l.strip_suffix('}').ok_or_else(|| format!("unclosed labels: {line}"))?),
        ),
        None => (series, None),
    };
    if !valid_name(name) {
        return Err(format!("bad metric name: {line}"));
    }
    if let Some(labels) = labels {
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once("=\"").ok_or_else(|| format!("bad label: {line}"))?;
            if !valid_name(k) || v.contains('\n') {
                return Err(format!("bad label {k}: {line}"));
            }
        }
    }
    Ok(())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn samples(text: &str) -> HashMap<String, f64> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("prometheus-parse reads the exposition");
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            };
            (format!("{}{{{}}}", s.metric, labels.join(",")), value)
        })
        .collect()
}

#[tokio::test]
async fn counters_move_with_traffic_and_the_exposition_is_valid() {
    let proxy = TestProxy::start(test_config()).await;
    let origin = FakeOrigin::start("origin-a").await;
    origin.register(proxy.api).await;

    let before = samples(&get(proxy.api, "/metrics").await.text());
    assert_eq!(before.get("srs_proxy_claims_total{result=new}"), None);

    let resp = client::send(proxy.http, Method::GET, "/live/m.flv", &[], Bytes::new()).await;
    let mut body = resp.into_body();
    read_n(&mut body, 200_000).await;
    let r = get(proxy.http, "/live/m.m3u8").await;
    assert_eq!(r.status, StatusCode::OK);
    let r = get(proxy.http, "/live/nothing.exe").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let reply = get(proxy.api, "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = reply.text();
    for line in text.lines() {
        check_line(line).unwrap();
    }
    let m = samples(&text);
    let at = |k: &str| m.get(k).copied().unwrap_or_else(|| panic!("no sample {k} in\n{text}"));
    assert_eq!(at("srs_proxy_build_info{version=0.1.0}"), 1.0);
    assert_eq!(at("srs_proxy_connections_total{protocol=http-flv,role=player}"), 1.0);
    assert_eq!(at("srs_proxy_connections_active{protocol=http-flv,role=player}"), 1.0);
    assert!(at("srs_proxy_bytes_relayed_total{direction=out,protocol=http-flv}") >= 200_000.0);
    assert!(at("srs_proxy_bytes_relayed_total{direction=out,protocol=hls}") > 0.0);
    assert_eq!(at("srs_proxy_claims_total{result=new}"), 1.0);
    assert_eq!(at("srs_proxy_claims_total{result=hit}"), 1.0);
    assert_eq!(at("srs_proxy_registrations_total{result=ok}"), 1.0);
    assert_eq!(
        at("srs_proxy_http_requests_total{fault=none,route=flv,status=200}"),
        1.0
    );
    assert_eq!(
        at("srs_proxy_http_requests_total{fault=client,route=static,status=404}"),
        1.0
    );
    assert_eq!(at("srs_proxy_origins_live{pool=,source=heartbeat}"), 1.0);
    assert_eq!(at("srs_proxy_streams_active{}"), 1.0, "m.flv and m.m3u8 are one stream");
    assert!(
        text.contains("srs_proxy_store_operation_seconds_count{op=\"claim\",result=\"ok\"} 2"),
        "{text}"
    );

    drop(body);
    let closed = support::eventually(std::time::Duration::from_secs(5), || async {
        let m = samples(&get(proxy.api, "/metrics").await.text());
        (m.get("srs_proxy_connections_active{protocol=http-flv,role=player}") == Some(&0.0)).then_some(())
    })
    .await;
    assert!(closed.is_some(), "active connection gauge did not go back to 0");
}

#[test]
fn the_line_checker_rejects_garbage() {
    for bad in [
        "metric",
        "1metric 1",
        "m{a=\"b\" 1",
        "m{a-b=\"c\"} 1",
        "# TYPE m wat",
        "m x",
    ] {
        assert!(check_line(bad).is_err(), "{bad}");
    }
    assert!(check_line("m{a=\"b\",c=\"d\"} 1.5").is_ok());
}
