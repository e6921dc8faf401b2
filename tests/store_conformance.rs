//! The store contract, one suite for every implementation: each test
//! function below runs against the memory store (with tokio's clock paused,
//! so TTLs pass at once) and against the Redis store on a real redis-server
//! this binary starts (with real, short TTLs).

mod support;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use srs_proxy::balance::{pick, Candidate, Policy};
use srs_proxy::origin::{Origin, OriginSource, Ports, Protocol};
use srs_proxy::store::{
    Claim, ClaimOutcome, HealthChange, HealthRules, MemoryStore, OriginGone, RedisStore, Session, SessionKind, Store,
    StoreError, StreamStatus,
};
use srs_proxy::stream_key::StreamKey;
use support::redis::RedisServer;
use tokio::sync::broadcast;

/// Short enough to wait out, long enough that no step of a test outlives it.
const TTL: Duration = Duration::from_secs(1);
/// A little more than [`TTL`].
const PAST_TTL: Duration = Duration::from_millis(1300);
/// Longer than any test runs.
const LONG: Duration = Duration::from_secs(60);

/// The store under test and how to look beneath it.
struct Subject {
    store: Store,
    /// The Redis server and this test's key namespace.
    redis: Option<(&'static RedisServer, String)>,
}

impl Subject {
    fn memory() -> Self {
        Self {
            store: Store::Memory(MemoryStore::new()),
            redis: None,
        }
    }

    async fn redis(test: &str) -> Self {
        let server = RedisServer::shared();
        let store = RedisStore::connect(&server.config(&format!("conformance:{test}:")))
            .await
            .unwrap();
        Self {
            redis: Some((server, store.namespace().to_string())),
            store: Store::Redis(store),
        }
    }

    /// Another client of the same state: a second proxy replica.
    async fn replica(&self) -> Store {
        match (&self.store, &self.redis) {
            (Store::Redis(_), Some((server, ns))) => {
                let prefix = ns.strip_suffix("{routing}:").unwrap();
                Store::Redis(RedisStore::connect(&server.config(prefix)).await.unwrap())
            }
            (store, _) => store.clone(),
        }
    }

    /// Entries that describe streams or sessions, expired or not: what
    /// would grow if something were never dropped.
    async fn stream_state(&self) -> usize {
        match (&self.store, &self.redis) {
            (Store::Memory(m), _) => m.entry_count() - self.store.list_origins().await.unwrap().len(),
            (_, Some((server, ns))) => {
                // What describes origins: registrations, their policy
                // entries and the sets of origins with room.
                let origin_keys =
                    ["origins", "registrations", "policy", "gone", "health", "probe-turns"].map(|k| format!("{ns}{k}"));
                let keys = server.keys(&format!("{ns}*"));
                keys.iter()
                    .filter(|k| !origin_keys.contains(k) && !k.starts_with(&format!("{ns}room:")))
                    .count()
            }
            _ => unreachable!(),
        }
    }
}

fn origin(id: &str) -> Origin {
    Origin {
        id: id.into(),
        ip: "10.0.0.1".into(),
        ports: Ports {
            rtmp: Some(1935),
            http: Some(8080),
            ..Ports::default()
        },
        source: OriginSource::Heartbeat,
        weight: 1,
        max_streams: 0,
        pool: None,
        registered_by: None,
    }
}

fn weighted(id: &str, weight: u32, max_streams: u32) -> Origin {
    Origin {
        weight,
        max_streams,
        ..origin(id)
    }
}

fn key(stream: &str) -> StreamKey {
    StreamKey::new("__defaultVhost__", "live", stream).unwrap()
}

async fn claim(store: &Store, stream: &str, policy: Policy) -> (String, ClaimOutcome) {
    match store.claim(&key(stream), policy, LONG).await.unwrap() {
        Claim::Origin(o, outcome) => (o.id.to_string(), outcome),
        Claim::NoOrigin => panic!("no origin for {stream}"),
    }
}

/// Every stream mapping, read a few at a time.
async fn all_streams(store: &Store) -> Vec<StreamStatus> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store.list_streams(cursor.as_deref(), 3).await.unwrap();
        out.extend(page.streams);
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    // A Redis listing may name a mapping twice (HSCAN); each is one stream.
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out.dedup_by(|a, b| a.key == b.key);
    out
}

async fn live_ids(store: &Store) -> Vec<String> {
    store
        .list_origins()
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.origin.id.to_string())
        .collect()
}

async fn counts(store: &Store) -> BTreeMap<String, u32> {
    store
        .list_origins()
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.origin.id.to_string(), o.streams))
        .collect()
}

/// The next announcement of a gone origin, waiting at most a few seconds.
async fn next_gone(rx: &mut broadcast::Receiver<OriginGone>) -> String {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("an origin-gone announcement")
        .unwrap()
        .id
}

async fn origins_are_upserted_listed_and_removed(s: Subject) {
    let store = &s.store;
    store.upsert_origin(origin("a"), Some(LONG)).await.unwrap();
    store.upsert_origin(origin("b"), None).await.unwrap();
    let list = store.list_origins().await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].origin, origin("a"));
    assert_eq!(list[0].streams, 0);
    let expires = list[0].expires_in_secs.expect("a has a TTL");
    assert!(expires > 0.0 && expires <= LONG.as_secs_f64(), "{expires}");
    assert_eq!(list[1].expires_in_secs, None, "static origins never expire");

    // A new registration under the same id replaces the old one.
    let mut moved = origin("a");
    moved.ports.http = Some(8081);
    store.upsert_origin(moved.clone(), Some(LONG)).await.unwrap();
    assert_eq!(store.origin("a").await.unwrap(), Some(moved));

    assert!(store.remove_origin("a").await.unwrap());
    assert!(!store.remove_origin("a").await.unwrap(), "already gone");
    assert_eq!(store.origin("a").await.unwrap(), None);
    assert_eq!(live_ids(store).await, ["b"]);
}

async fn expired_origins_are_never_returned(s: Subject) {
    let store = &s.store;
    store.upsert_origin(origin("short"), Some(TTL)).await.unwrap();
    store.upsert_origin(origin("static"), None).await.unwrap();
    assert_eq!(live_ids(store).await, ["short", "static"]);
    tokio::time::sleep(PAST_TTL).await;
    // Before any sweep: gone from every read.
    assert_eq!(live_ids(store).await, ["static"]);
    assert_eq!(store.origin("short").await.unwrap(), None);
    assert_eq!(store.registration("short").await.unwrap(), None);
    for i in 0..10 {
        let (id, _) = claim(store, &format!("s{i}"), Policy::Random).await;
        assert_eq!(id, "static");
    }
    // A heartbeat brings it back.
    store.upsert_origin(origin("short"), Some(LONG)).await.unwrap();
    assert_eq!(live_ids(store).await, ["short", "static"]);
}

async fn a_claim_sticks_and_is_refreshed(s: Subject) {
    let store = &s.store;
    store.upsert_origin(origin("a"), None).await.unwrap();
    store.upsert_origin(origin("b"), None).await.unwrap();
    let k = key("cam");
    let Claim::Origin(first, ClaimOutcome::New) = store.claim(&k, Policy::Random, TTL).await.unwrap() else {
        panic!("a new stream is placed")
    };
    for _ in 0..5 {
        // A hit refreshes the mapping's TTL.
        let Claim::Origin(again, ClaimOutcome::Hit) = store.claim(&k, Policy::Random, LONG).await.unwrap() else {
            panic!("a mapped stream is a hit")
        };
        assert_eq!(again, first);
    }
    assert_eq!(store.lookup(&k).await.unwrap(), Some(first.clone()));
    let streams = all_streams(store).await;
    assert_eq!(streams.len(), 1);
    assert_eq!(streams[0].key, k);
    assert_eq!(*streams[0].origin_id, *first.id);
    assert!(streams[0].age_secs >= 0.0);
    assert!(
        streams[0].expires_in_secs > TTL.as_secs_f64(),
        "the hit extended the TTL: {}",
        streams[0].expires_in_secs
    );
    tokio::time::sleep(PAST_TTL).await;
    assert_eq!(store.lookup(&k).await.unwrap(), Some(first));
}

async fn an_unrefreshed_mapping_expires(s: Subject) {
    let store = &s.store;
    store.upsert_origin(origin("a"), None).await.unwrap();
    let k = key("cam");
    store.claim(&k, Policy::LeastStreams, TTL).await.unwrap();
    assert!(store.lookup(&k).await.unwrap().is_some());
    tokio::time::sleep(PAST_TTL).await;
    assert_eq!(store.lookup(&k).await.unwrap(), None);
    assert!(all_streams(store).await.is_empty());
    assert_eq!(counts(store).await["a"], 0);
    let (_, outcome) = claim(store, "cam", Policy::LeastStreams).await;
    assert_eq!(outcome, ClaimOutcome::New, "an expired mapping is no failover");
}

async fn a_refreshed_mapping_lives_until_its_new_expiry(s: Subject) {
    let store = &s.store;
    store.upsert_origin(origin("a"), None).await.unwrap();
    let (long, short) = (key("long"), key("short"));
    store.claim(&long, Policy::LeastStreams, TTL).await.unwrap();
    store.claim(&short, Policy::LeastStreams, LONG).await.unwrap();
    // One refresh moves an expiry later, the other earlier.
    let Claim::Origin(_, ClaimOutcome::Hit) = store.claim(&long, Policy::LeastStreams, 3 * TTL).await.unwrap() else {
        panic!("a mapped stream is a hit")
    };
    assert!(store.refresh_stream(&short, "a", TTL).await.unwrap());
    tokio::time::sleep(PAST_TTL).await;
    assert!(
        store.lookup(&long).await.unwrap().is_some(),
        "alive past its first expiry"
    );
    assert_eq!(
        store.lookup(&short).await.unwrap(),
        None,
        "gone at its shortened expiry"
    );
    assert_eq!(counts(store).await["a"], 1);
    tokio::time::sleep(2 * TTL).await;
    assert_eq!(store.lookup(&long).await.unwrap(), None, "gone at its refreshed expiry");
    assert_eq!(counts(store).await["a"], 0);
    store.sweep().await.unwrap();
    assert_eq!(s.stream_state().await, 0);
}

async fn no_origin_and_full_origins_give_no_origin(s: Subject) {
    let store = &s.store;
    for policy in [Policy::LeastStreams, Policy::Random, Policy::ConsistentHash] {
        assert!(matches!(
            store.claim(&key("x"), policy, LONG).await.unwrap(),
            Claim::NoOrigin
        ));
    }
    store.upsert_origin(weighted("small", 1, 2), None).await.unwrap();
    claim(store, "one", Policy::LeastStreams).await;
    claim(store, "two", Policy::ConsistentHash).await;
    for policy in [Policy::LeastStreams, Policy::Random, Policy::ConsistentHash] {
        assert!(
            matches!(store.claim(&key("three"), policy, LONG).await.unwrap(), Claim::NoOrigin),
            "{policy}: an origin at max_streams takes no new stream"
        );
    }
    // Its streams still find it.
    assert_eq!(claim(store, "one", Policy::Random).await.1, ClaimOutcome::Hit);
    store.release_stream(&key("one"), "small").await.unwrap();
    assert_eq!(claim(store, "three", Policy::Random).await.0, "small");
}

async fn least_streams_follows_load_and_weight(s: Subject) {
    let store = &s.store;
    store.upsert_origin(weighted("a", 1, 0), None).await.unwrap();
    store.upsert_origin(weighted("b", 2, 0), None).await.unwrap();
    for i in 0..30 {
        claim(store, &format!("s{i}"), Policy::LeastStreams).await;
    }
    // One at a time by streams/weight: exactly 1:2.
    assert_eq!(
        counts(store).await,
        BTreeMap::from([("a".into(), 10), ("b".into(), 20)])
    );
    store.upsert_origin(weighted("c", 1, 0), None).await.unwrap();
    for i in 30..40 {
        assert_eq!(claim(store, &format!("s{i}"), Policy::LeastStreams).await.0, "c");
    }
}

async fn consistent_hash_is_rendezvous_of_the_stream_key(s: Subject) {
    let store = &s.store;
    let origins: Vec<Origin> = [("a", 1), ("b", 2), ("c", 1)]
        .iter()
        .map(|(id, w)| weighted(id, *w, 0))
        .collect();
    for o in &origins {
        store.upsert_origin(o.clone(), None).await.unwrap();
    }
    let candidates: Vec<Candidate> = origins.iter().map(|origin| Candidate { origin, streams: 0 }).collect();
    let mut used = HashSet::new();
    for i in 0..30 {
        let stream = format!("s{i}");
        let expected = pick(Policy::ConsistentHash, &key(&stream), &candidates, 0).unwrap();
        let (got, _) = claim(store, &stream, Policy::ConsistentHash).await;
        assert_eq!(*got, *expected.id, "{stream}");
        used.insert(got);
    }
    assert_eq!(used.len(), 3);
}

async fn random_uses_every_origin(s: Subject) {
    let store = &s.store;
    store.upsert_origin(origin("a"), None).await.unwrap();
    store.upsert_origin(origin("b"), None).await.unwrap();
    let mut used = HashSet::new();
    for i in 0..40 {
        used.insert(claim(store, &format!("s{i}"), Policy::Random).await.0);
    }
    assert_eq!(used.len(), 2);
}

async fn streams_of_a_removed_or_expired_origin_fail_over(s: Subject) {
    let store = &s.store;
    store.upsert_origin(origin("doomed"), Some(TTL)).await.unwrap();
    assert_eq!(
        claim(store, "one", Policy::LeastStreams).await,
        ("doomed".into(), ClaimOutcome::New)
    );
    store.upsert_origin(origin("a"), None).await.unwrap();
    tokio::time::sleep(PAST_TTL).await;
    // Expired: its mapping is not served, not refreshed, and re-claimed.
    assert_eq!(store.lookup(&key("one")).await.unwrap(), None);
    assert!(!store.refresh_stream(&key("one"), "doomed", LONG).await.unwrap());
    assert_eq!(
        claim(store, "one", Policy::LeastStreams).await,
        ("a".into(), ClaimOutcome::Failover)
    );
    assert_eq!(
        claim(store, "one", Policy::LeastStreams).await,
        ("a".into(), ClaimOutcome::Hit)
    );

    // Removed: the same.
    store.upsert_origin(origin("b"), None).await.unwrap();
    store.remove_origin("a").await.unwrap();
    assert_eq!(
        claim(store, "one", Policy::LeastStreams).await,
        ("b".into(), ClaimOutcome::Failover)
    );
    assert_eq!(counts(store).await, BTreeMap::from([("b".into(), 1)]));
}

async fn refresh_and_release(s: Subject) {
    let store = &s.store;
    store.upsert_origin(origin("a"), None).await.unwrap();
    store.upsert_origin(origin("b"), None).await.unwrap();
    let k = key("cam");
    let (owner, _) = claim(store, "cam", Policy::Random).await;
    let other = if owner == "a" { "b" } else { "a" };
    store.claim(&k, Policy::Random, TTL).await.unwrap();
    assert!(store.refresh_stream(&k, &owner, LONG).await.unwrap());
    assert!(
        !store.refresh_stream(&k, other, LONG).await.unwrap(),
        "mapped elsewhere"
    );
    tokio::time::sleep(PAST_TTL).await;
    assert_eq!(
        store.lookup(&k).await.unwrap().map(|o| o.id.to_string()),
        Some(owner.clone()),
        "refresh extended it"
    );

    store.release_stream(&k, other).await.unwrap();
    assert!(
        store.lookup(&k).await.unwrap().is_some(),
        "release by a non-owner is ignored"
    );
    store.release_stream(&k, &owner).await.unwrap();
    assert_eq!(store.lookup(&k).await.unwrap(), None);
    assert_eq!(counts(store).await.values().sum::<u32>(), 0);
    // A relay still running takes its stream back on its next refresh.
    assert!(store.refresh_stream(&k, &owner, LONG).await.unwrap());
    assert_eq!(
        store.lookup(&k).await.unwrap().map(|o| o.id.to_string()),
        Some(owner.clone())
    );
    assert_eq!(counts(store).await[&owner], 1);
}

async fn stream_counts_follow_claims_releases_and_expiry(s: Subject) {
    let store = &s.store;
    store.upsert_origin(origin("a"), None).await.unwrap();
    for i in 0..3 {
        store
            .claim(&key(&format!("s{i}")), Policy::LeastStreams, TTL)
            .await
            .unwrap();
    }
    assert_eq!(counts(store).await["a"], 3);
    store.release_stream(&key("s0"), "a").await.unwrap();
    assert_eq!(counts(store).await["a"], 2);
    store.refresh_stream(&key("s1"), "a", LONG).await.unwrap();
    tokio::time::sleep(PAST_TTL).await;
    assert_eq!(counts(store).await["a"], 1, "s2 expired, s1 was refreshed");
}

async fn sessions_live_while_used(s: Subject) {
    let store = &s.store;
    let session = Session {
        key: key("cam"),
        origin_id: "a".into(),
        ice_pwd: None,
    };
    store
        .put_session(SessionKind::Hls, "t1", session.clone(), TTL)
        .await
        .unwrap();
    store
        .put_session(SessionKind::Hls, "t2", session.clone(), TTL)
        .await
        .unwrap();
    assert_eq!(
        store.touch_session(SessionKind::Rtc, "t1", TTL).await.unwrap(),
        None,
        "kinds are apart"
    );
    assert_eq!(
        store.touch_session(SessionKind::Hls, "t1", LONG).await.unwrap(),
        Some(session.clone())
    );
    tokio::time::sleep(PAST_TTL).await;
    assert_eq!(
        store.touch_session(SessionKind::Hls, "t1", LONG).await.unwrap(),
        Some(session),
        "touched, so extended"
    );
    assert_eq!(store.touch_session(SessionKind::Hls, "t2", LONG).await.unwrap(), None);
    assert_eq!(
        store.touch_session(SessionKind::Hls, "never", LONG).await.unwrap(),
        None
    );
}

async fn webrtc_sessions_keep_their_ice_pwd_until_removed(s: Subject) {
    let store = &s.store;
    let session = Session {
        key: key("cam"),
        origin_id: "a".into(),
        ice_pwd: Some("0123456789abcdef0123456789abcdef".into()),
    };
    let id = "answerufrag:offerufrag";
    store
        .put_session(SessionKind::Rtc, id, session.clone(), TTL)
        .await
        .unwrap();
    assert_eq!(
        store.touch_session(SessionKind::Rtc, id, TTL).await.unwrap(),
        Some(session.clone()),
        "read back whole, on any replica"
    );
    store.remove_session(SessionKind::Hls, id).await.unwrap();
    assert!(
        store.touch_session(SessionKind::Rtc, id, TTL).await.unwrap().is_some(),
        "kinds are apart"
    );
    store.remove_session(SessionKind::Rtc, id).await.unwrap();
    assert_eq!(store.touch_session(SessionKind::Rtc, id, TTL).await.unwrap(), None);
    store.remove_session(SessionKind::Rtc, id).await.unwrap();
}

async fn an_idle_store_forgets_every_stream_and_session(s: Subject) {
    let store = &s.store;
    store.upsert_origin(origin("a"), None).await.unwrap();
    store.upsert_origin(origin("b"), Some(LONG)).await.unwrap();
    for i in 0..10 {
        let k = key(&format!("s{i}"));
        store.claim(&k, Policy::LeastStreams, TTL).await.unwrap();
        store.refresh_stream(&k, "a", TTL).await.unwrap();
        let session = Session {
            key: k,
            origin_id: "a".into(),
            ice_pwd: None,
        };
        store
            .put_session(SessionKind::Hls, &format!("h{i}"), session.clone(), TTL)
            .await
            .unwrap();
        store
            .put_session(SessionKind::Rtc, &format!("r{i}"), session.clone(), TTL)
            .await
            .unwrap();
    }
    store.release_stream(&key("s0"), "a").await.unwrap();
    store.release_stream(&key("s1"), "b").await.unwrap();
    assert!(s.stream_state().await >= 10);
    tokio::time::sleep(PAST_TTL).await;
    store.sweep().await.unwrap();
    assert!(all_streams(store).await.is_empty());
    assert_eq!(counts(store).await, BTreeMap::from([("a".into(), 0), ("b".into(), 0)]));
    assert_eq!(s.stream_state().await, 0, "nothing of streams or sessions is left");
}

async fn every_replica_agrees_on_a_contended_claim(s: Subject) {
    for id in ["a", "b", "c"] {
        s.store.upsert_origin(origin(id), None).await.unwrap();
    }
    let replicas = [s.store.clone(), s.replica().await];
    for round in 0..5 {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..40 {
            let store = replicas[i % 2].clone();
            tasks.spawn(async move { claim(&store, &format!("hot{round}"), Policy::Random).await });
        }
        let mut owners = HashSet::new();
        let mut new = 0;
        while let Some(r) = tasks.join_next().await {
            let (id, outcome) = r.unwrap();
            owners.insert(id);
            new += usize::from(outcome == ClaimOutcome::New);
        }
        assert_eq!(owners.len(), 1, "round {round}: one stream, one origin");
        assert_eq!(new, 1, "round {round}: exactly one claim placed it");
    }
    assert_eq!(all_streams(&s.store).await.len(), 5);
    assert_eq!(counts(&s.store).await.values().sum::<u32>(), 5);
}

async fn every_replica_hears_of_a_gone_origin(s: Subject) {
    let replica = s.replica().await;
    let mut here = s.store.subscribe_gone();
    let mut there = replica.subscribe_gone();
    s.store.upsert_origin(origin("removed"), None).await.unwrap();
    s.store.upsert_origin(origin("expires"), Some(TTL)).await.unwrap();
    assert!(replica.remove_origin("removed").await.unwrap());
    assert_eq!(next_gone(&mut here).await, "removed");
    assert_eq!(next_gone(&mut there).await, "removed");
    tokio::time::sleep(PAST_TTL).await;
    s.store.sweep().await.unwrap();
    assert_eq!(next_gone(&mut there).await, "expires");
    assert_eq!(next_gone(&mut here).await, "expires");
    // Announced once: another sweep has nothing to say.
    replica.sweep().await.unwrap();
    s.store.sweep().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for rx in [&mut here, &mut there] {
        let extra = rx.try_recv();
        assert!(
            matches!(extra, Err(broadcast::error::TryRecvError::Empty)),
            "announced twice: {extra:?}"
        );
    }
}

/// A new stream is placed only on an origin serving the protocol asked
/// for; an existing mapping wins whatever the protocol.
async fn new_streams_go_to_origins_that_serve_the_protocol(s: Subject) {
    let store = &s.store;
    let mut http_only = origin("http-only");
    http_only.ports.rtmp = None;
    let mut rtmp_only = origin("rtmp-only");
    rtmp_only.ports.http = None;
    store.upsert_origin(http_only, None).await.unwrap();
    store.upsert_origin(rtmp_only, None).await.unwrap();
    for policy in [Policy::LeastStreams, Policy::Random, Policy::ConsistentHash] {
        for i in 0..8 {
            for (protocol, want) in [(Protocol::Rtmp, "rtmp-only"), (Protocol::Http, "http-only")] {
                let k = key(&format!("{policy}-{protocol}-{i}"));
                match store.claim_for(&k, policy, LONG, Some(protocol)).await.unwrap() {
                    Claim::Origin(o, ClaimOutcome::New) => assert_eq!(&*o.id, want, "{policy} {protocol}"),
                    other => panic!("{other:?}"),
                }
            }
        }
    }
    // The stream lives on the HTTP-only origin: an RTMP request finds it there.
    let k = key(&format!("{}-{}-0", Policy::Random, Protocol::Http));
    match store
        .claim_for(&k, Policy::Random, LONG, Some(Protocol::Rtmp))
        .await
        .unwrap()
    {
        Claim::Origin(o, ClaimOutcome::Hit) => assert_eq!(&*o.id, "http-only"),
        other => panic!("{other:?}"),
    }
    // WebRTC needs signalling (api) and media (rtc) on the same origin.
    let webrtc = |id: &str, api: Option<u16>| {
        let mut o = origin(id);
        o.ports = Ports {
            rtc: Some(8000),
            api,
            ..Ports::default()
        };
        o
    };
    let rtc_only = webrtc("rtc-only", None);
    let rtc_and_api = webrtc("rtc-and-api", Some(1985));
    store.upsert_origin(rtc_only, None).await.unwrap();
    store.upsert_origin(rtc_and_api, None).await.unwrap();
    for i in 0..8 {
        match store
            .claim_for(&key(&format!("rtc-{i}")), Policy::Random, LONG, Some(Protocol::Rtc))
            .await
            .unwrap()
        {
            Claim::Origin(o, ClaimOutcome::New) => assert_eq!(&*o.id, "rtc-and-api"),
            other => panic!("{other:?}"),
        }
    }
    store.remove_origin("rtmp-only").await.unwrap();
    assert!(matches!(
        store
            .claim_for(&key("fresh"), Policy::LeastStreams, LONG, Some(Protocol::Rtmp))
            .await
            .unwrap(),
        Claim::NoOrigin
    ));
}

/// Claims run the policies on the stores' own indexes (origins with room
/// ordered by load, per protocol); whatever happened before (origins
/// leaving, failing, healing, changing), the origin a claim places a new
/// stream on is `balance::pick` over the live healthy origins serving the
/// protocol, with their stream counts, and the same salt.
async fn claims_place_as_balance_pick_does(s: Subject) {
    let store = &s.store;
    let mut rng = StdRng::seed_from_u64(17);
    let protocols = [None, Some(Protocol::Rtmp), Some(Protocol::Http), Some(Protocol::Srt)];
    let policies = [Policy::LeastStreams, Policy::Random, Policy::ConsistentHash];
    let register = |rng: &mut StdRng, i: usize| {
        let mut o = weighted(
            &format!("o{i}"),
            rng.random_range(0..=3),
            [0, 0, 2, 4][rng.random_range(0..4)],
        );
        o.ports.rtmp = rng.random_bool(0.7).then_some(1935);
        o.ports.http = rng.random_bool(0.7).then_some(8080);
        o.ports.srt = rng.random_bool(0.3).then_some(10080);
        o
    };
    for i in 0..8 {
        store.upsert_origin(register(&mut rng, i), None).await.unwrap();
    }
    let mut mapped: Vec<(StreamKey, String)> = Vec::new();
    let mut placed = 0;
    for step in 0..300 {
        match rng.random_range(0..10) {
            // Now and then an origin leaves, comes back or changes.
            0 => {
                let id = format!("o{}", rng.random_range(0..8));
                let heal = HealthRules {
                    failures: 1,
                    successes: 1,
                };
                match rng.random_range(0..4) {
                    0 => drop(store.remove_origin(&id).await.unwrap()),
                    1 => drop(store.report_failure(&id, "refused").await.unwrap()),
                    2 => drop(store.record_probe(&id, Ok(()), heal).await.unwrap()),
                    _ => {
                        let i = id[1..].parse().unwrap();
                        store.upsert_origin(register(&mut rng, i), None).await.unwrap();
                    }
                }
            }
            1 | 2 if !mapped.is_empty() => {
                let (k, id) = mapped.swap_remove(rng.random_range(0..mapped.len()));
                store.release_stream(&k, &id).await.unwrap();
            }
            _ => {
                let k = key(&format!("s{step}"));
                let (policy, protocol) = (policies[rng.random_range(0..3)], protocols[rng.random_range(0..4)]);
                let salt = rng.random();
                let live = store.list_origins().await.unwrap();
                let candidates: Vec<Candidate> = live
                    .iter()
                    .filter(|o| o.healthy && protocol.is_none_or(|p| o.origin.serves(p)))
                    .map(|o| Candidate {
                        origin: &o.origin,
                        streams: o.streams,
                    })
                    .collect();
                let expected = pick(policy, &k, &candidates, salt).map(|o| o.id.clone());
                let got = match store.claim_salted(&k, policy, LONG, protocol, salt).await.unwrap() {
                    Claim::Origin(o, ClaimOutcome::New) => Some(o.id),
                    Claim::NoOrigin => None,
                    other => panic!("{other:?}"),
                };
                assert_eq!(got, expected, "step {step}: {policy} {protocol:?} salt {salt:x}");
                if let Some(id) = got {
                    placed += 1;
                    mapped.push((k, id.to_string()));
                }
            }
        }
    }
    assert!(placed > 100, "the walk must mostly place streams ({placed})");
}

/// Streams whose mapping expired stop counting before any sweep: the next
/// claims see the origin as empty.
async fn expired_mappings_stop_counting_at_once(s: Subject) {
    let store = &s.store;
    store.upsert_origin(origin("a"), None).await.unwrap();
    for i in 0..3 {
        store
            .claim(&key(&format!("old{i}")), Policy::LeastStreams, TTL)
            .await
            .unwrap();
    }
    store.upsert_origin(origin("b"), None).await.unwrap();
    for i in 0..2 {
        assert_eq!(claim(store, &format!("b{i}"), Policy::LeastStreams).await.0, "b");
    }
    tokio::time::sleep(PAST_TTL).await;
    // a's three expired (no sweep ran): a is now the emptier one.
    assert_eq!(claim(store, "next", Policy::LeastStreams).await.0, "a");
    assert_eq!(counts(store).await, BTreeMap::from([("a".into(), 1), ("b".into(), 2)]));
}

/// Listing streams is paged; every mapping shows up once the pages are
/// read, and a cursor the store did not hand out is refused.
async fn streams_are_listed_a_page_at_a_time(s: Subject) {
    let store = &s.store;
    store.upsert_origin(origin("a"), None).await.unwrap();
    for i in 0..25 {
        claim(store, &format!("s{i:02}"), Policy::LeastStreams).await;
    }
    let first = store.list_streams(None, 10).await.unwrap();
    assert!(!first.streams.is_empty() && first.streams.len() <= 25);
    let all = all_streams(store).await;
    let names: Vec<String> = all.iter().map(|s| s.key.stream.to_string()).collect();
    let expected: Vec<String> = (0..25).map(|i| format!("s{i:02}")).collect();
    assert_eq!(names, expected);
    assert!(matches!(
        store.list_streams(Some("not a cursor"), 10).await,
        Err(StoreError::BadCursor)
    ));
}

/// A failed connect makes an origin unhealthy at once, for every replica:
/// no new streams, its mappings re-claimed, its relays told to end; a
/// heartbeat does not make it healthy again.
async fn a_failed_origin_is_unhealthy_at_once_everywhere(s: Subject) {
    let store = &s.store;
    let replica = s.replica().await;
    store.upsert_origin(origin("a"), Some(LONG)).await.unwrap();
    claim(store, "on-a", Policy::LeastStreams).await;
    store.upsert_origin(origin("b"), None).await.unwrap();
    let mut there = replica.subscribe_gone();

    assert_eq!(
        replica.report_failure("a", "connection refused").await.unwrap(),
        HealthChange::Unhealthy
    );
    assert_eq!(next_gone(&mut there).await, "a", "relays to it are told to end");
    let listed = store.list_origins().await.unwrap();
    let a = listed.iter().find(|o| *o.origin.id == *"a").expect("still registered");
    assert!(!a.healthy);
    assert_eq!(a.last_error.as_deref(), Some("connection refused"));
    assert!(a.since.is_some());
    assert!(listed.iter().find(|o| *o.origin.id == *"b").unwrap().healthy);

    assert_eq!(store.origin("a").await.unwrap(), None);
    // Its registration, and so who owns the id, is unchanged.
    assert_eq!(
        store.registration("a").await.unwrap().map(|o| o.id.to_string()),
        Some("a".to_string())
    );
    assert_eq!(store.lookup(&key("on-a")).await.unwrap(), None);
    assert!(!store.refresh_stream(&key("on-a"), "a", LONG).await.unwrap());
    for policy in [Policy::LeastStreams, Policy::Random, Policy::ConsistentHash] {
        for i in 0..5 {
            assert_eq!(claim(store, &format!("{policy}{i}"), policy).await.0, "b");
        }
    }
    assert_eq!(
        claim(store, "on-a", Policy::LeastStreams).await,
        ("b".into(), ClaimOutcome::Failover)
    );
    // Again: nothing changes, nothing more is announced.
    assert_eq!(
        store.report_failure("a", "still refused").await.unwrap(),
        HealthChange::Unchanged
    );
    // A heartbeat keeps it registered, not healthy.
    store.upsert_origin(origin("a"), Some(LONG)).await.unwrap();
    assert_eq!(store.origin("a").await.unwrap(), None);
    // An origin nobody registered has no health to change.
    assert_eq!(
        store.report_failure("nobody", "refused").await.unwrap(),
        HealthChange::Unchanged
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(matches!(there.try_recv(), Err(broadcast::error::TryRecvError::Empty)));
}

/// Records probe results (`true`: answered) of `id` in order; returns
/// what each changed.
async fn probes(store: &Store, id: &str, rules: HealthRules, answered: &[bool]) -> Vec<HealthChange> {
    let mut out = Vec::new();
    for ok in answered {
        let result = if *ok { Ok(()) } else { Err("no answer".to_string()) };
        out.push(store.record_probe(id, result, rules).await.unwrap());
    }
    out
}

/// Probes move an origin with thresholds: `failures` failures in a row to
/// fall, `successes` successes in a row to come back.
async fn probes_make_origins_unhealthy_and_healthy_again(s: Subject) {
    use HealthChange::{Healthy, Unchanged, Unhealthy};
    let store = &s.store;
    let rules = HealthRules {
        failures: 2,
        successes: 3,
    };
    store.upsert_origin(origin("a"), None).await.unwrap();
    store.upsert_origin(origin("b"), None).await.unwrap();
    let mut gone = store.subscribe_gone();
    // A success in between starts the count again.
    assert_eq!(probes(store, "a", rules, &[false, true, false]).await, [Unchanged; 3]);
    assert!(
        store.origin("a").await.unwrap().is_some(),
        "one failure in a row is not enough"
    );
    assert_eq!(probes(store, "a", rules, &[false]).await, [Unhealthy]);
    assert_eq!(next_gone(&mut gone).await, "a");
    assert_eq!(store.origin("a").await.unwrap(), None);
    for i in 0..4 {
        assert_eq!(claim(store, &format!("down{i}"), Policy::LeastStreams).await.0, "b");
    }

    let back = probes(store, "a", rules, &[true, true, false, true, true, true]).await;
    assert_eq!(back, [Unchanged, Unchanged, Unchanged, Unchanged, Unchanged, Healthy]);
    let a = store.list_origins().await.unwrap().remove(0);
    assert!(a.healthy && *a.origin.id == *"a");
    // Back, and the emptier one: least-streams fills it up.
    for i in 0..4 {
        assert_eq!(claim(store, &format!("up{i}"), Policy::LeastStreams).await.0, "a");
    }
    // Removing an origin forgets its health.
    store.report_failure("a", "refused").await.unwrap();
    store.remove_origin("a").await.unwrap();
    store.upsert_origin(origin("a"), None).await.unwrap();
    assert!(store.origin("a").await.unwrap().is_some());
}

/// Flapping is damped: with consistent-hash, an origin that fails and
/// comes back moves only its own streams while it is out, and taking it
/// back moves nothing (streams that moved stay where they went; streams on
/// the others never moved).
async fn an_origin_failing_and_returning_moves_only_its_own_streams(s: Subject) {
    let store = &s.store;
    for id in ["a", "b", "c"] {
        store.upsert_origin(origin(id), None).await.unwrap();
    }
    let streams: Vec<String> = (0..30).map(|i| format!("s{i}")).collect();
    let mut before = Vec::new();
    for stream in &streams {
        before.push(claim(store, stream, Policy::ConsistentHash).await.0);
    }
    assert!(before.iter().any(|o| o == "a"), "some streams on a: {before:?}");
    store.report_failure("a", "refused").await.unwrap();
    let mut during = Vec::new();
    for (stream, was) in streams.iter().zip(&before) {
        let (now, outcome) = claim(store, stream, Policy::ConsistentHash).await;
        if was == "a" {
            assert_ne!(now, "a");
            assert_eq!(outcome, ClaimOutcome::Failover);
        } else {
            assert_eq!((&now, outcome), (was, ClaimOutcome::Hit), "{stream} stays");
        }
        during.push(now);
    }
    let heal = HealthRules {
        failures: 1,
        successes: 1,
    };
    assert_eq!(
        store.record_probe("a", Ok(()), heal).await.unwrap(),
        HealthChange::Healthy
    );
    for (stream, was) in streams.iter().zip(&during) {
        assert_eq!(
            claim(store, stream, Policy::ConsistentHash).await,
            (was.clone(), ClaimOutcome::Hit),
            "{stream} does not move back"
        );
    }
}

/// Each origin's probe goes to one replica: the one that took it keeps it
/// while it asks again within the hold; another takes over only when it
/// stops asking.
async fn probe_turns_go_to_one_replica_at_a_time(s: Subject) {
    let store = &s.store;
    let replica = s.replica().await;
    for id in ["a", "b"] {
        store.upsert_origin(origin(id), None).await.unwrap();
    }
    let ids: Vec<String> = ["a", "b", "unregistered"].map(String::from).to_vec();
    assert_eq!(store.probe_turns(&ids, "one", TTL).await.unwrap(), ["a", "b"]);
    assert!(replica.probe_turns(&ids, "two", TTL).await.unwrap().is_empty());
    assert_eq!(
        store.probe_turns(&ids[..1], "one", TTL).await.unwrap(),
        ["a"],
        "the holder keeps its turn"
    );
    tokio::time::sleep(PAST_TTL).await;
    // "one" stopped asking: its turns lapsed and go to whoever asks.
    assert_eq!(replica.probe_turns(&ids, "two", TTL).await.unwrap(), ["a", "b"]);
    assert!(store.probe_turns(&ids, "one", TTL).await.unwrap().is_empty());
    // A removed origin's turn goes with it.
    store.remove_origin("a").await.unwrap();
    store.upsert_origin(origin("a"), None).await.unwrap();
    assert_eq!(store.probe_turns(&ids, "one", TTL).await.unwrap(), ["a"]);
}

/// Runs each test function against both stores.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(start_paused = true)]
                async fn $name() {
                    super::$name(super::Subject::memory()).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Subject::redis(stringify!($name)).await).await
                }
            )*
        }
    };
}

conformance!(
    origins_are_upserted_listed_and_removed,
    expired_origins_are_never_returned,
    a_claim_sticks_and_is_refreshed,
    an_unrefreshed_mapping_expires,
    a_refreshed_mapping_lives_until_its_new_expiry,
    no_origin_and_full_origins_give_no_origin,
    least_streams_follows_load_and_weight,
    consistent_hash_is_rendezvous_of_the_stream_key,
    random_uses_every_origin,
    streams_of_a_removed_or_expired_origin_fail_over,
    refresh_and_release,
    stream_counts_follow_claims_releases_and_expiry,
    sessions_live_while_used,
    webrtc_sessions_keep_their_ice_pwd_until_removed,
    an_idle_store_forgets_every_stream_and_session,
    every_replica_agrees_on_a_contended_claim,
    every_replica_hears_of_a_gone_origin,
    new_streams_go_to_origins_that_serve_the_protocol,
    claims_place_as_balance_pick_does,
    expired_mappings_stop_counting_at_once,
    streams_are_listed_a_page_at_a_time,
    a_failed_origin_is_unhealthy_at_once_everywhere,
    probes_make_origins_unhealthy_and_healthy_again,
    probe_turns_go_to_one_replica_at_a_time,
    an_origin_failing_and_returning_moves_only_its_own_streams,
);
