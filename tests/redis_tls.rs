//! The Redis store over TLS (`rediss://`), against a redis-server started
//! with a certificate made for the test: a private CA named by
//! `redis.tls_ca_file`, with and without a client certificate.

mod support;

use std::time::Duration;

use srs_proxy::balance::Policy;
use srs_proxy::config::RedisConfig;
use srs_proxy::origin::Origin;
use srs_proxy::store::{Claim, RedisStore, Store};
use srs_proxy::stream_key::StreamKey;
use support::redis::{store_origin, RedisServer, TestCerts, TlsRedis};

fn tls_config(redis: &TlsRedis, prefix: &str) -> RedisConfig {
    RedisConfig {
        url: format!("rediss://127.0.0.1:{}", redis.tls_port),
        ..redis.server.config(prefix)
    }
}

fn origin() -> Origin {
    store_origin("origin-a", "10.0.0.1", 8080)
}

/// Claims a stream through `config`'s store; `Err` when the store cannot
/// be reached (after its first connection attempt is given up on).
async fn claim_through(config: &RedisConfig) -> Result<String, String> {
    let store = Store::Redis(RedisStore::connect(config).await.map_err(|e| e.to_string())?);
    store.ping().await.map_err(|e| e.to_string())?;
    store.upsert_origin(origin(), None).await.map_err(|e| e.to_string())?;
    let key = StreamKey::new("__defaultVhost__", "live", "secure").unwrap();
    match store.claim(&key, Policy::LeastStreams, Duration::from_secs(60)).await {
        Ok(Claim::Origin(o, _)) => Ok(o.id.to_string()),
        other => Err(format!("{other:?}")),
    }
}

#[tokio::test]
async fn a_private_ca_is_trusted_when_named_and_only_then() {
    let certs = TestCerts::generate();
    let redis = RedisServer::start_tls(&certs, false);
    let mut config = tls_config(&redis, "tls-ca:");

    // The system roots do not know the test CA: the handshake fails and
    // the store never becomes usable.
    let refused = claim_through(&config).await;
    assert!(refused.is_err(), "an unknown CA was trusted: {refused:?}");
    assert!(redis.server.keys("tls-ca:*").is_empty());

    config.tls_ca_file = Some(certs.ca.clone());
    assert_eq!(claim_through(&config).await, Ok("origin-a".to_string()));
    // The state went to this Redis (read back over its plain port).
    assert!(redis.server.keys("tls-ca:*").iter().any(|k| k.ends_with("mappings")));
}

#[tokio::test]
async fn a_client_certificate_is_presented_when_redis_requires_one() {
    let certs = TestCerts::generate();
    let redis = RedisServer::start_tls(&certs, true);
    let mut config = tls_config(&redis, "tls-client:");
    config.tls_ca_file = Some(certs.ca.clone());

    let refused = claim_through(&config).await;
    assert!(
        refused.is_err(),
        "Redis took a client without a certificate: {refused:?}"
    );

    config.tls_cert_file = Some(certs.client_cert.clone());
    config.tls_key_file = Some(certs.client_key.clone());
    assert_eq!(claim_through(&config).await, Ok("origin-a".to_string()));
}

#[test]
fn tls_files_are_checked_when_the_store_is_built() {
    let certs = TestCerts::generate();
    let config = RedisConfig {
        url: "rediss://127.0.0.1:6380".into(),
        tls_ca_file: Some(certs.client_key.clone()),
        ..RedisConfig::default()
    };
    let err = srs_proxy::store::redis::fred_config(&config).unwrap_err();
    assert!(err.contains("redis.tls_ca_file"), "{err}");
    let config = RedisConfig {
        tls_ca_file: Some(certs.ca.clone()),
        tls_cert_file: Some(certs.client_cert.clone()),
        tls_key_file: Some(certs.ca.clone()),
        ..config
    };
    let err = srs_proxy::store::redis::fred_config(&config).unwrap_err();
    assert!(err.contains("redis.tls_key_file"), "{err}");
}
