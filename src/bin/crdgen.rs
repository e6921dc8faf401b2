//! Prints the OriginPool CRD as YAML: `cargo run --bin crdgen > crds/originpools.srsproxy.io.yaml`.

fn main() {
    print!("{}", srs_proxy::crd::crd_yaml());
}
