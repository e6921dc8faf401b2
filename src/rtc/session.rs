//! The replica's table of WebRTC sessions: which STUN username belongs to
//! which stream and origin, and which client address is bound to it.
//!
//! An entry arrives from signalling on this replica or, on a miss, from the
//! shared store (the client's UDP may reach another replica than its
//! signalling did). It stays unbound until a connectivity check with a
//! verified MESSAGE-INTEGRITY binds a client address; from then on a relay
//! task owns the session's upstream socket and the table routes the
//! client's datagrams to it. The table is bounded: at `max` entries new
//! sessions are refused, so spoofed usernames cannot grow memory.
//!
//! Only map operations happen under the lock, never an await.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::store::Session;
use crate::stream_key::StreamKey;

/// Datagrams queued for a session's relay before the listener drops more
/// (UDP semantics: a relay that cannot keep up loses packets, it does not
/// slow other sessions).
const QUEUE: usize = 256;

/// What the proxy knows of one WebRTC session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// STUN USERNAME of the client's checks: `<answer ufrag>:<offer ufrag>`.
    pub username: String,
    pub key: StreamKey,
    pub origin_id: String,
    /// The answer's ice-pwd: the key of the client's MESSAGE-INTEGRITY.
    pub ice_pwd: String,
}

impl Record {
    /// The shared-store form of the record.
    pub fn to_session(&self) -> Session {
        Session {
            key: self.key.clone(),
            origin_id: self.origin_id.clone(),
            ice_pwd: Some(self.ice_pwd.clone()),
        }
    }

    /// Rebuilds a record read from the store; `None` for a session that is
    /// not a WebRTC one (no ice-pwd).
    pub fn from_session(username: &str, session: Session) -> Option<Self> {
        Some(Self {
            username: username.to_string(),
            key: session.key,
            origin_id: session.origin_id,
            ice_pwd: session.ice_pwd?,
        })
    }
}

/// A datagram from a bound client, with the address it came from.
pub type Inbound = (SocketAddr, Bytes);

/// The table is at its configured maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many WebRTC sessions on this proxy (limit {0})")]
pub struct Full(pub usize);

/// Outcome of [`Sessions::bind`].
pub enum Bind {
    /// The session had no relay yet: start one reading `rx`.
    Start {
        record: Arc<Record>,
        generation: u64,
        rx: mpsc::Receiver<Inbound>,
        tx: mpsc::Sender<Inbound>,
    },
    /// The session's relay runs; the address now routes to it (the same
    /// address again, or a new one after NAT rebinding / ICE restart).
    Running(mpsc::Sender<Inbound>),
    /// The session left the table meanwhile.
    Gone,
}

struct Link {
    tx: mpsc::Sender<Inbound>,
    /// The bound client address; `None` once another session took it.
    addr: Option<SocketAddr>,
}

struct Entry {
    record: Arc<Record>,
    /// Set once a verified binding started the relay.
    link: Option<Link>,
    /// When the entry arrived: unbound entries leave after the idle timeout.
    since: Instant,
    /// Tells this entry from a later one with the same username, so a
    /// relay that ends removes only its own.
    generation: u64,
}

#[derive(Default)]
struct Inner {
    by_username: HashMap<String, Entry>,
    /// Bound client address → username.
    by_addr: HashMap<SocketAddr, String>,
    next_generation: u64,
}

/// The replica's session table; shared by signalling, the UDP listener and
/// the relays.
pub struct Sessions {
    inner: Mutex<Inner>,
    max: usize,
}

impl Sessions {
    pub fn new(max: usize) -> Self {
        Self {
            inner: Mutex::default(),
            max,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update is a few map operations with no await; a panic in
        // between cannot leave a half-built entry worth refusing.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Entries (bound or not).
    pub fn len(&self) -> usize {
        self.lock().by_username.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether another session fits.
    pub fn has_room(&self) -> bool {
        self.len() < self.max
    }

    /// Adds a session; an entry with the same username keeps its relay
    /// and takes the new record.
    pub fn insert(&self, record: Record) -> Result<(), Full> {
        let mut inner = self.lock();
        if let Some(entry) = inner.by_username.get_mut(&record.username) {
            entry.record = Arc::new(record);
            return Ok(());
        }
        if inner.by_username.len() >= self.max {
            return Err(Full(self.max));
        }
        inner.next_generation += 1;
        let generation = inner.next_generation;
        inner.by_username.insert(
            record.username.clone(),
            Entry {
                record: Arc::new(record),
                link: None,
                since: Instant::now(),
                generation,
            },
        );
        Ok(())
    }

    /// The session for a STUN username.
    pub fn record(&self, username: &str) -> Option<Arc<Record>> {
        self.lock().by_username.get(username).map(|e| e.record.clone())
    }

    /// Where datagrams from `addr` go, and the username bound to it.
    pub fn route(&self, addr: &SocketAddr) -> Option<(mpsc::Sender<Inbound>, String)> {
        let inner = self.lock();
        let username = inner.by_addr.get(addr)?;
        let link = inner.by_username.get(username)?.link.as_ref()?;
        Some((link.tx.clone(), username.clone()))
    }

    /// Binds `addr` to the session (its integrity already verified):
    /// moves the session there if it was bound elsewhere, and takes the
    /// address from any session it was bound to before.
    pub fn bind(&self, username: &str, addr: SocketAddr) -> Bind {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if !inner.by_username.contains_key(username) {
            return Bind::Gone;
        }
        if let Some(previous) = inner.by_addr.insert(addr, username.to_string()) {
            if previous != username {
                if let Some(link) = inner.by_username.get_mut(&previous).and_then(|e| e.link.as_mut()) {
                    // That session keeps its relay until it idles out; it
                    // just no longer receives from this address.
                    if link.addr == Some(addr) {
                        link.addr = None;
                    }
                }
            }
        }
        let entry = inner.by_username.get_mut(username).expect("checked above");
        match entry.link.as_mut() {
            Some(link) => {
                if let Some(old) = link.addr.replace(addr).filter(|old| *old != addr) {
                    inner.by_addr.remove(&old);
                }
                Bind::Running(link.tx.clone())
            }
            None => {
                let (tx, rx) = mpsc::channel(QUEUE);
                entry.link = Some(Link {
                    tx: tx.clone(),
                    addr: Some(addr),
                });
                Bind::Start {
                    record: entry.record.clone(),
                    generation: entry.generation,
                    rx,
                    tx,
                }
            }
        }
    }

    /// Removes a session (any generation when `generation` is `None`) and
    /// its address binding. Dropping the entry closes its relay's queue,
    /// which ends the relay.
    pub fn remove(&self, username: &str, generation: Option<u64>) -> bool {
        let mut inner = self.lock();
        let matches = inner
            .by_username
            .get(username)
            .is_some_and(|e| generation.is_none_or(|g| g == e.generation));
        if !matches {
            return false;
        }
        let entry = inner.by_username.remove(username).expect("checked above");
        if let Some(addr) = entry.link.and_then(|l| l.addr) {
            if inner.by_addr.get(&addr).is_some_and(|u| u == username) {
                inner.by_addr.remove(&addr);
            }
        }
        true
    }

    /// Drops entries that never got a verified binding within `max_age`,
    /// and those of `gone_origin`; returns how many left.
    pub fn sweep_unbound(&self, max_age: std::time::Duration, gone_origin: Option<&str>) -> usize {
        let now = Instant::now();
        let mut inner = self.lock();
        let before = inner.by_username.len();
        inner.by_username.retain(|_, e| {
            e.link.is_some()
                || (now.duration_since(e.since) < max_age && gone_origin != Some(e.record.origin_id.as_str()))
        });
        before - inner.by_username.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(username: &str) -> Record {
        Record {
            username: username.into(),
            key: StreamKey::new("", "live", "cam").unwrap(),
            origin_id: "o1".into(),
            ice_pwd: "pwd".into(),
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn bounded() {
        let table = Sessions::new(2);
        table.insert(record("a:1")).unwrap();
        table.insert(record("b:1")).unwrap();
        assert_eq!(table.insert(record("c:1")), Err(Full(2)));
        table.insert(record("a:1")).unwrap();
        assert_eq!(table.len(), 2, "same username replaces, does not add");
        assert!(table.remove("a:1", None));
        table.insert(record("c:1")).unwrap();
    }

    #[test]
    fn binding_routes_and_rebinding_moves() {
        let table = Sessions::new(4);
        table.insert(record("a:1")).unwrap();
        assert!(table.route(&addr(1)).is_none());
        let Bind::Start { mut rx, .. } = table.bind("a:1", addr(1)) else {
            panic!("first binding starts the relay")
        };
        let (tx, user) = table.route(&addr(1)).unwrap();
        assert_eq!(user, "a:1");
        tx.try_send((addr(1), Bytes::from_static(b"x"))).unwrap();
        assert_eq!(rx.try_recv().unwrap().1, Bytes::from_static(b"x"));
        // NAT rebinding: the new address routes, the old one no longer.
        assert!(matches!(table.bind("a:1", addr(2)), Bind::Running(_)));
        assert!(table.route(&addr(1)).is_none());
        assert!(table.route(&addr(2)).is_some());
        // Removing ends the relay's queue.
        assert!(table.remove("a:1", None));
        assert!(rx.try_recv().is_err());
        assert!(table.route(&addr(2)).is_none());
        assert!(matches!(table.bind("a:1", addr(2)), Bind::Gone));
    }

    #[test]
    fn an_address_belongs_to_one_session() {
        let table = Sessions::new(4);
        table.insert(record("a:1")).unwrap();
        table.insert(record("b:1")).unwrap();
        let _a = table.bind("a:1", addr(1));
        let _b = table.bind("b:1", addr(1));
        assert_eq!(table.route(&addr(1)).unwrap().1, "b:1");
        // a's relay ending must not unbind the address b now holds.
        assert!(table.remove("a:1", None));
        assert_eq!(table.route(&addr(1)).unwrap().1, "b:1");
    }

    #[test]
    fn generations_protect_newer_entries() {
        let table = Sessions::new(4);
        table.insert(record("a:1")).unwrap();
        let Bind::Start { generation, .. } = table.bind("a:1", addr(1)) else {
            panic!()
        };
        table.remove("a:1", None);
        table.insert(record("a:1")).unwrap();
        assert!(
            !table.remove("a:1", Some(generation)),
            "an old relay leaves the new entry alone"
        );
        assert_eq!(table.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn unbound_entries_expire_bound_ones_stay() {
        let table = Sessions::new(4);
        table.insert(record("a:1")).unwrap();
        table.insert(record("b:1")).unwrap();
        let _bound = table.bind("b:1", addr(1));
        tokio::time::advance(std::time::Duration::from_secs(5)).await;
        assert_eq!(table.sweep_unbound(std::time::Duration::from_secs(10), None), 0);
        let mut c = record("c:1");
        c.origin_id = "o2".into();
        table.insert(c).unwrap();
        assert_eq!(
            table.sweep_unbound(std::time::Duration::from_secs(10), Some("o2")),
            1,
            "origin gone"
        );
        tokio::time::advance(std::time::Duration::from_secs(6)).await;
        assert_eq!(table.sweep_unbound(std::time::Duration::from_secs(10), None), 1);
        assert!(table.record("a:1").is_none());
        assert!(table.record("b:1").is_some());
    }

    #[test]
    fn store_form_round_trips() {
        let r = record("a:1");
        assert_eq!(Record::from_session("a:1", r.to_session()), Some(r.clone()));
        let mut hls = r.to_session();
        hls.ice_pwd = None;
        assert_eq!(Record::from_session("a:1", hls), None);
    }
}
