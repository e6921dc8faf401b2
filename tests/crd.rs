//! The OriginPool CRD: the committed YAML is what the Rust types generate,
//! and the example OriginPool in deploy/ is valid against it.

use std::path::Path;

use serde_json::Value;
use srs_proxy::crd::{crd_yaml, OriginPool};

const CRD_FILE: &str = "crds/originpools.srsproxy.io.yaml";
const CHART_CRD_FILE: &str = "charts/srs-proxy/crds/originpools.srsproxy.io.yaml";
const EXAMPLE_FILE: &str = "deploy/originpool.yaml";

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn first_difference(a: &str, b: &str) -> String {
    a.lines()
        .zip(b.lines())
        .enumerate()
        .find(|(_, (x, y))| x != y)
        .map(|(i, (x, y))| format!("line {}: committed {x:?}, generated {y:?}", i + 1))
        .unwrap_or_else(|| format!("lengths differ: {} vs {} lines", a.lines().count(), b.lines().count()))
}

#[test]
fn committed_crd_is_what_the_types_generate() {
    let generated = crd_yaml();
    let committed = read(CRD_FILE);
    assert!(
        committed == generated,
        "{CRD_FILE} is out of date ({}); run `make crds`",
        first_difference(&committed, &generated)
    );
}

#[test]
fn crdgen_prints_the_committed_crd() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_crdgen"))
        .output()
        .expect("run crdgen");
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), read(CRD_FILE));
}

#[test]
fn the_chart_ships_the_generated_crd() {
    let chart = read(CHART_CRD_FILE);
    assert!(
        chart == crd_yaml(),
        "{CHART_CRD_FILE} differs from the generated CRD ({}); run `make crds`",
        first_difference(&chart, &crd_yaml())
    );
}

/// The `openAPIV3Schema` of v1alpha1 as committed.
fn committed_schema() -> Value {
    let crd: Value = serde_yaml::from_str(&read(CRD_FILE)).unwrap();
    let versions = crd["spec"]["versions"].as_array().unwrap();
    let v1alpha1 = versions.iter().find(|v| v["name"] == "v1alpha1").unwrap();
    v1alpha1["schema"]["openAPIV3Schema"].clone()
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&committed_schema()).expect("the CRD schema is a valid JSON schema")
}

fn example() -> Value {
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&read(EXAMPLE_FILE))
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|d: &Value| d["kind"] == "OriginPool")
        .collect();
    assert_eq!(docs.len(), 1, "{EXAMPLE_FILE} holds one OriginPool");
    docs.into_iter().next().unwrap()
}

#[test]
fn the_example_originpool_is_valid() {
    let example = example();
    assert_eq!(example["apiVersion"], "srsproxy.io/v1alpha1");
    let errors: Vec<String> = validator().iter_errors(&example).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{EXAMPLE_FILE}: {errors:?}");
    let pool: OriginPool = serde_json::from_value(example).expect("the example reads as an OriginPool");
    assert!(!pool.spec.service.is_empty());
}

#[test]
fn the_schema_rejects_what_the_api_server_must_reject() {
    let validator = validator();
    let mut cases: Vec<(&str, Value)> = Vec::new();
    let mut bad = example();
    bad["spec"]["policy"] = "round-robin".into();
    cases.push(("unknown policy", bad));
    let mut bad = example();
    bad["spec"]["weight"] = 0.into();
    cases.push(("weight 0", bad));
    let mut bad = example();
    bad["spec"]["maxStreams"] = (-1).into();
    cases.push(("negative maxStreams", bad));
    let mut bad = example();
    bad["spec"]["registrationTtlSeconds"] = 0.into();
    cases.push(("TTL 0", bad));
    let mut bad = example();
    bad["spec"].as_object_mut().unwrap().remove("service");
    cases.push(("no service", bad));
    let mut bad = example();
    bad["spec"]["ports"]["rtmp"] = 1935.into();
    cases.push(("port number instead of name", bad));
    for (what, doc) in cases {
        assert!(!validator.is_valid(&doc), "{what} should be rejected");
    }
}
