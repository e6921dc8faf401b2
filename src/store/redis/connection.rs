//! Where the Redis store's commands go, and how they keep going there
//! across a failover.
//!
//! * **Standalone and Sentinel**: one `fred` client for commands and one for
//!   pub/sub; fred reconnects by itself, and with Sentinel it asks the
//!   sentinels for the primary (checking its `ROLE`) on every reconnect.
//! * **Cluster**: every key of the store lives in one hash slot, so the
//!   store talks to the primary of that slot alone, over a plain connection,
//!   and follows it: a `MOVED` reply or a lost connection makes it ask the
//!   cluster (`CLUSTER SLOTS`, from any node it knows) who owns the slot now,
//!   every 100 ms until someone does; an `ASK` reply (the slot is migrating)
//!   runs that one call on the importing node after `ASKING`; `TRYAGAIN`
//!   is retried within the call's time bound. A node that holds other
//!   slots can die without the store noticing. (fred's cluster client would
//!   hold every command while any node of the cluster is unreachable.)
//!
//! While the connection to the primary is down every call fails at once
//! ([`Connection::node`]), so a client gets its 503 immediately instead of
//! waiting for the reconnect. Nothing here retries a request beyond the
//! redirections above.

use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use fred::prelude::{
    ClientLike, ClientState, Config as FredConfig, ErrorKind, EventInterface, LuaInterface, PubsubInterface,
    ReconnectPolicy, Server, ServerConfig, TcpConfig, Value,
};
use fred::types::config::UnresponsiveConfig;
use fred::types::{Builder, ClusterHash, CustomCommand};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::store::{OriginGone, StoreError};

/// How often the cluster is asked for the slot's owner while the store has
/// no working connection to it.
const CLUSTER_POLL: Duration = Duration::from_millis(100);
/// How often the slot's owner is checked while all is well (catches a
/// manual failover that moved the slot without dropping the connection).
const CLUSTER_CHECK: Duration = Duration::from_secs(5);
/// While the connection stays down, a repeated failure is logged this
/// rarely.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// A connection to one Redis primary: commands and pub/sub.
struct Node {
    /// The node's address (cluster mode); `None` when fred picks it.
    server: Option<Server>,
    client: fred::prelude::Client,
    /// A subscribed connection can run no other command.
    subscriber: fred::prelude::Client,
    /// Relays gone-origin messages and logs connection changes.
    listener: JoinHandle<()>,
    subscribed: watch::Receiver<bool>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.listener.abort();
        let (client, subscriber) = (self.client.clone(), self.subscriber.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = subscriber.quit().await;
                let _ = client.quit().await;
            });
        }
    }
}

enum Mode {
    /// fred follows the primary (standalone, Sentinel).
    Direct,
    /// This module follows the owner of `slot`.
    Cluster {
        /// Connection settings (auth, TLS) for any node; the server is set
        /// per node.
        base: Box<FredConfig>,
        slot: u16,
        /// Nodes to ask who owns the slot: the configured ones, then every
        /// node the last answer named.
        known: StdMutex<Vec<Server>>,
        /// Serialises switching to another node.
        switching: tokio::sync::Mutex<()>,
    },
}

struct Shared {
    mode: Mode,
    current: StdMutex<Option<Arc<Node>>>,
    channel: String,
    gone: broadcast::Sender<OriginGone>,
    timeout: Duration,
    /// Wakes the cluster supervisor: the connection failed or moved.
    resync: Arc<Notify>,
}

/// The store's connection, cheap to share.
#[derive(Clone)]
pub(crate) struct Connection {
    shared: Arc<Shared>,
}

/// Ends the cluster supervisor with the last handle.
pub(crate) struct Supervisor(Option<JoinHandle<()>>);

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// A fred client for `config`, with the store's timeouts and reconnects.
fn build(config: FredConfig, timeout: Duration, reconnect: bool) -> Result<fred::prelude::Client, String> {
    let mut builder = Builder::from_config(config);
    builder
        .with_connection_config(|c| {
            c.connection_timeout = timeout;
            c.internal_command_timeout = timeout;
            // A command caught by a dropped connection fails now rather
            // than waiting for the reconnect to be sent again.
            c.max_command_attempts = 1;
            // A connection that leaves a command unanswered this long is
            // dropped and re-made, so a hung Redis fails fast too.
            c.unresponsive = UnresponsiveConfig {
                max_timeout: Some(timeout * 2),
                interval: (timeout / 2).max(Duration::from_millis(50)),
            };
            c.tcp = TcpConfig {
                nodelay: Some(true),
                ..TcpConfig::default()
            };
        })
        .with_performance_config(|p| p.default_command_timeout = timeout);
    if reconnect {
        // Unlimited attempts, 50 ms doubling to 500 ms, little jitter: after
        // a failover the new primary is found within half a second.
        let mut policy = ReconnectPolicy::new_exponential(0, 50, 500, 2);
        policy.set_jitter(20);
        builder.set_policy(policy);
    }
    builder.build().map_err(|e| e.details().to_string())
}

fn unavailable(e: &fred::error::Error, timeout: Duration) -> StoreError {
    StoreError::Unavailable(match e.kind() {
        ErrorKind::Canceled => "redis connection lost".to_string(),
        ErrorKind::Timeout => format!("redis did not answer within {timeout:?}"),
        _ => format!("redis: {}", e.details()),
    })
}

/// The address in a `MOVED`/`ASK` reply (`MOVED 3999 10.0.0.2:6379`).
fn redirect(e: &fred::error::Error, kind: &str) -> Option<Server> {
    let mut parts = e.details().split_whitespace();
    if parts.next()? != kind {
        return None;
    }
    let addr = parts.nth(1)?;
    let (host, port) = addr.rsplit_once(':')?;
    Some(Server::new(
        host.trim_start_matches('[').trim_end_matches(']'),
        port.parse().ok()?,
    ))
}

impl Connection {
    /// Connects in the background: returns at once (after at most
    /// `timeout` spent waiting for a first connection), so the proxy starts
    /// and reports not-ready while Redis is away.
    pub(crate) async fn connect(
        config: FredConfig,
        timeout: Duration,
        hash_tag: &str,
        channel: String,
        gone: broadcast::Sender<OriginGone>,
    ) -> Result<(Self, Supervisor), String> {
        let clustered = matches!(config.server, ServerConfig::Clustered { .. });
        let mode = if clustered {
            Mode::Cluster {
                known: StdMutex::new(config.server.hosts()),
                slot: fred::util::redis_keyslot(hash_tag.as_bytes()),
                base: Box::new(config.clone()),
                switching: tokio::sync::Mutex::new(()),
            }
        } else {
            Mode::Direct
        };
        let connection = Self {
            shared: Arc::new(Shared {
                mode,
                current: StdMutex::new(None),
                channel,
                gone,
                timeout,
                resync: Arc::new(Notify::new()),
            }),
        };
        let supervisor = if clustered {
            if let Some(owner) = connection.find_owner().await {
                connection.switch_to(owner).await?;
            }
            let this = connection.clone();
            Supervisor(Some(tokio::spawn(async move { this.supervise().await })))
        } else {
            connection.install(None, config)?;
            Supervisor(None)
        };
        // Ready means commands work and removals are heard.
        let ready = async {
            loop {
                if let Some(node) = connection.current() {
                    node.client.wait_for_connect().await?;
                    let mut subscribed = node.subscribed.clone();
                    let _ = subscribed.wait_for(|s| *s).await;
                    return Ok::<(), fred::error::Error>(());
                }
                tokio::time::sleep(CLUSTER_POLL).await;
            }
        };
        match tokio::time::timeout(timeout, ready).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "redis not reachable yet; retrying in the background"),
            Err(_) => tracing::warn!("redis not reachable yet; retrying in the background"),
        }
        Ok((connection, supervisor))
    }

    fn current(&self) -> Option<Arc<Node>> {
        self.shared.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Makes a node of `config` the current one.
    fn install(&self, server: Option<Server>, config: FredConfig) -> Result<Arc<Node>, String> {
        let timeout = self.shared.timeout;
        let client = build(config, timeout, true)?;
        let subscriber = client.clone_new();
        let (subscribed_tx, subscribed) = watch::channel(false);
        // Receivers exist before the first connection so it is not missed.
        let listener = tokio::spawn(listen(
            Relay {
                channel: self.shared.channel.clone(),
                gone: self.shared.gone.clone(),
                resync: self.shared.resync.clone(),
            },
            client.clone(),
            subscriber.clone(),
            subscribed_tx,
        ));
        client.connect();
        subscriber.connect();
        let node = Arc::new(Node {
            server,
            client,
            subscriber,
            listener,
            subscribed,
        });
        *self.shared.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(node.clone());
        Ok(node)
    }

    /// The current node if its connection works; fails at once otherwise
    /// (fred's own per-command fail-fast does not reach EVALSHA).
    fn node(&self) -> Result<Arc<Node>, StoreError> {
        match self.current() {
            Some(node) if node.client.state() == ClientState::Connected => Ok(node),
            Some(_) => {
                self.shared.resync.notify_one();
                Err(StoreError::Unavailable("redis is not connected (reconnecting)".into()))
            }
            None => {
                self.shared.resync.notify_one();
                Err(StoreError::Unavailable(
                    "redis cluster: no node has answered who serves the store's slot".into(),
                ))
            }
        }
    }

    /// Runs the script (EVALSHA, or EVAL when the server lacks it), following
    /// cluster redirections.
    pub(crate) async fn eval(
        &self,
        sha: &str,
        script: &str,
        keys: Vec<String>,
        argv: Vec<String>,
    ) -> Result<Value, StoreError> {
        let timeout = self.shared.timeout;
        let deadline = Instant::now() + timeout;
        let mut moved = 0;
        loop {
            let node = self.node()?;
            let result = eval_on(&node.client, sha, script, keys.clone(), argv.clone()).await;
            let Err(e) = result else {
                return result.map_err(|e| unavailable(&e, timeout));
            };
            if let Some(owner) = redirect(&e, "MOVED") {
                // The slot moved (failover or resharding): follow it, once.
                moved += 1;
                if moved > 1 {
                    return Err(unavailable(&e, timeout));
                }
                tracing::info!(node = %owner, "redis cluster: the store's slot moved; following it");
                self.switch_to(owner).await.map_err(StoreError::Unavailable)?;
                self.wait_connected(deadline).await?;
                continue;
            }
            if let Some(target) = redirect(&e, "ASK") {
                return self.asking(target, script, keys, argv).await;
            }
            if e.details().starts_with("TRYAGAIN") && Instant::now() + Duration::from_millis(25) < deadline {
                // Mid-migration, the script's keys are split between two
                // nodes for a moment.
                tokio::time::sleep(Duration::from_millis(25)).await;
                continue;
            }
            return Err(unavailable(&e, timeout));
        }
    }

    /// Runs one call on the node importing the slot (`ASK` redirection), on
    /// a connection of its own so `ASKING` applies to this call alone.
    async fn asking(
        &self,
        target: Server,
        script: &str,
        keys: Vec<String>,
        argv: Vec<String>,
    ) -> Result<Value, StoreError> {
        let timeout = self.shared.timeout;
        let Mode::Cluster { base, .. } = &self.shared.mode else {
            return Err(StoreError::Unavailable(
                "redis: ASK redirection outside a cluster".into(),
            ));
        };
        let client = one_off(base, &target, timeout).await?;
        let result = async {
            client
                .custom::<Value, String>(CustomCommand::new_static("ASKING", ClusterHash::Random, false), vec![])
                .await?;
            client.eval::<Value, _, _, _>(script, keys, argv).await
        }
        .await;
        let _ = client.quit().await;
        result.map_err(|e| unavailable(&e, timeout))
    }

    async fn wait_connected(&self, deadline: Instant) -> Result<(), StoreError> {
        loop {
            if self.node().is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return self.node().map(drop);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        let node = self.node()?;
        node.client
            .ping::<String>(None)
            .await
            .map(drop)
            .map_err(|e| unavailable(&e, self.shared.timeout))
    }

    /// Switches the current node to `owner` unless it is already there.
    async fn switch_to(&self, owner: Server) -> Result<(), String> {
        let Mode::Cluster { base, switching, .. } = &self.shared.mode else {
            return Ok(());
        };
        let _one_at_a_time = switching.lock().await;
        if self.current().is_some_and(|n| n.server.as_ref() == Some(&owner)) {
            return Ok(());
        }
        let mut config = FredConfig::clone(base);
        config.server = ServerConfig::Centralized { server: owner.clone() };
        tracing::info!(node = %owner, "redis cluster: using the primary of the store's slot");
        self.install(Some(owner), config).map(drop)
    }

    /// Cluster mode: keeps the current node the owner of the slot.
    async fn supervise(self) {
        let mut failing_since: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = self.shared.resync.notified() => {}
                _ = tokio::time::sleep(CLUSTER_CHECK) => {}
            }
            loop {
                match self.find_owner().await {
                    Some(owner) => {
                        if let Err(e) = self.switch_to(owner).await {
                            tracing::warn!(error = %e, "redis cluster: cannot connect to the slot's primary");
                        }
                    }
                    None => {
                        let now = Instant::now();
                        if failing_since.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
                            tracing::warn!("redis cluster: no node answers who serves the store's slot; asking again");
                            failing_since = Some(now);
                        }
                    }
                }
                tokio::time::sleep(CLUSTER_POLL).await;
                if self
                    .current()
                    .is_some_and(|n| n.client.state() == ClientState::Connected)
                {
                    failing_since = None;
                    break;
                }
            }
        }
    }

    /// Asks the cluster who owns the store's slot: the current node first
    /// if it answers, then every other node known.
    async fn find_owner(&self) -> Option<Server> {
        let Mode::Cluster { base, slot, known, .. } = &self.shared.mode else {
            return None;
        };
        let timeout = self.shared.timeout;
        if let Some(node) = self.current().filter(|n| n.client.state() == ClientState::Connected) {
            if let Ok(reply) = cluster_slots(&node.client).await {
                if let Some(owner) = self.learn(&reply, node.server.as_ref(), *slot) {
                    return Some(owner);
                }
            }
        }
        let current = self.current().and_then(|n| n.server.clone());
        let mut candidates = known.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // The node that failed goes last: it is the least likely to answer.
        candidates.sort_by_key(|s| Some(s) == current.as_ref());
        for server in candidates {
            let Ok(client) = one_off(base, &server, timeout.min(Duration::from_millis(500))).await else {
                continue;
            };
            let reply = cluster_slots(&client).await;
            let _ = client.quit().await;
            if let Some(owner) = reply.ok().and_then(|r| self.learn(&r, Some(&server), *slot)) {
                return Some(owner);
            }
        }
        None
    }

    /// Reads a `CLUSTER SLOTS` reply: remembers every node it names and
    /// returns the primary serving `slot`.
    fn learn(&self, reply: &Value, asked: Option<&Server>, slot: u16) -> Option<Server> {
        let Mode::Cluster { known, .. } = &self.shared.mode else {
            return None;
        };
        let ranges = slot_ranges(reply, asked);
        {
            let mut known = known.lock().unwrap_or_else(|p| p.into_inner());
            for range in &ranges {
                for node in &range.nodes {
                    if !known.contains(node) {
                        known.push(node.clone());
                    }
                }
            }
        }
        ranges
            .into_iter()
            .find(|r| r.start <= slot && slot <= r.end)
            .and_then(|r| r.nodes.into_iter().next())
    }

    pub(crate) fn subscribe_gone(&self) -> broadcast::Receiver<OriginGone> {
        self.shared.gone.subscribe()
    }
}

async fn eval_on(
    client: &fred::prelude::Client,
    sha: &str,
    script: &str,
    keys: Vec<String>,
    argv: Vec<String>,
) -> Result<Value, fred::error::Error> {
    match client.evalsha(sha, keys.clone(), argv.clone()).await {
        // Redis restarted, failed over to a replica, or flushed its script
        // cache: EVAL runs the script and caches it again, in one round trip.
        Err(e) if e.details().starts_with("NOSCRIPT") => client.eval(script, keys, argv).await,
        r => r,
    }
}

/// A connected client to one node, without reconnects, for one question.
async fn one_off(base: &FredConfig, server: &Server, timeout: Duration) -> Result<fred::prelude::Client, StoreError> {
    let mut config = base.clone();
    config.server = ServerConfig::Centralized { server: server.clone() };
    config.fail_fast = true;
    let client = build(config, timeout, false).map_err(StoreError::Unavailable)?;
    match tokio::time::timeout(timeout, client.init()).await {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(e)) => Err(unavailable(&e, timeout)),
        Err(_) => {
            let _ = client.quit().await;
            Err(StoreError::Unavailable(format!("redis node {server} did not answer")))
        }
    }
}

async fn cluster_slots(client: &fred::prelude::Client) -> Result<Value, fred::error::Error> {
    client
        .custom::<Value, String>(
            CustomCommand::new_static("CLUSTER SLOTS", ClusterHash::Random, false),
            vec![],
        )
        .await
}

/// One row of `CLUSTER SLOTS`: a slot range and its nodes, primary first.
#[derive(Debug, PartialEq)]
struct SlotRange {
    start: u16,
    end: u16,
    nodes: Vec<Server>,
}

/// Parses `CLUSTER SLOTS`; a node listed without a host (`""`, `"?"`) is
/// on the host that was asked.
fn slot_ranges(reply: &Value, asked: Option<&Server>) -> Vec<SlotRange> {
    let Value::Array(rows) = reply else {
        return Vec::new();
    };
    rows.iter()
        .filter_map(|row| {
            let Value::Array(fields) = row else {
                return None;
            };
            let start = u16::try_from(fields.first()?.as_i64()?).ok()?;
            let end = u16::try_from(fields.get(1)?.as_i64()?).ok()?;
            let nodes = fields[2..]
                .iter()
                .filter_map(|node| {
                    let Value::Array(parts) = node else {
                        return None;
                    };
                    let host = parts.first()?.as_string()?;
                    let port = u16::try_from(parts.get(1)?.as_i64()?).ok()?;
                    let host = if host.is_empty() || host == "?" {
                        asked?.host.to_string()
                    } else {
                        host
                    };
                    Some(Server::new(host, port))
                })
                .collect();
            Some(SlotRange { start, end, nodes })
        })
        .collect()
}

/// What a node's listener needs of the connection (not the connection
/// itself, which owns the node: that would keep both alive forever).
struct Relay {
    channel: String,
    gone: broadcast::Sender<OriginGone>,
    resync: Arc<Notify>,
}

/// Relays `origin-gone` messages of one node to local subscribers,
/// re-subscribing on every (re)connection, and logs connection changes (a
/// failure that repeats is logged once per [`LOG_EVERY`]).
async fn listen(
    relay: Relay,
    client: fred::prelude::Client,
    subscriber: fred::prelude::Client,
    subscribed: watch::Sender<bool>,
) {
    let channel = relay.channel.as_str();
    let mut messages = subscriber.message_rx();
    let mut subscriber_connects = subscriber.reconnect_rx();
    let mut connects = client.reconnect_rx();
    let mut errors = client.error_rx();
    // Connections that fail and come back (a cluster answering CLUSTERDOWN,
    // a primary flapping) are logged once per LOG_EVERY, not every time.
    let mut last_warned: Option<Instant> = None;
    let mut last_connected: Option<Instant> = None;
    let recently = |at: Option<Instant>| at.is_some_and(|t| t.elapsed() < LOG_EVERY);
    loop {
        tokio::select! {
            event = subscriber_connects.recv() => match event {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    match subscriber.subscribe(channel).await {
                        Ok(()) => {
                            let _ = subscribed.send(true);
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot subscribe to origin removals; relays notice at their next refresh"),
                    }
                }
                Err(RecvError::Closed) => return,
            },
            message = messages.recv() => match message {
                Ok(m) if *m.channel == *channel => {
                    if let Some(id) = m.value.as_string() {
                        let _ = relay.gone.send(OriginGone { id });
                    }
                }
                // Missed messages: relays still notice at their next refresh.
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            event = connects.recv() => match event {
                Ok(server) => {
                    if !recently(last_connected) {
                        tracing::info!(%server, "connected to redis");
                        last_connected = Some(Instant::now());
                    }
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            event = errors.recv() => match event {
                Ok((e, _)) => {
                    relay.resync.notify_one();
                    if !recently(last_warned) {
                        tracing::warn!(error = %e, "redis connection failed; reconnecting");
                        last_warned = Some(Instant::now());
                    }
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value::String(s.into())
    }

    #[test]
    fn cluster_slots_are_read_with_the_primary_first() {
        let node = |host: &str, port: i64| Value::Array(vec![text(host), Value::Integer(port), text("id")]);
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Integer(0),
                Value::Integer(5460),
                node("10.0.0.1", 7000),
                node("10.0.0.4", 7003),
            ]),
            Value::Array(vec![Value::Integer(5461), Value::Integer(10922), node("", 7001)]),
            // Malformed rows are skipped, not fatal.
            Value::Array(vec![Value::Integer(1)]),
            text("junk"),
        ]);
        let asked = Server::new("10.0.0.9", 7009);
        let ranges = slot_ranges(&reply, Some(&asked));
        assert_eq!(
            ranges,
            vec![
                SlotRange {
                    start: 0,
                    end: 5460,
                    nodes: vec![Server::new("10.0.0.1", 7000), Server::new("10.0.0.4", 7003)],
                },
                SlotRange {
                    start: 5461,
                    end: 10922,
                    nodes: vec![Server::new("10.0.0.9", 7001)],
                },
            ]
        );
    }

    #[test]
    fn redirections_name_their_node() {
        let moved = fred::error::Error::new(ErrorKind::Cluster, "MOVED 3999 127.0.0.1:6381");
        assert_eq!(redirect(&moved, "MOVED"), Some(Server::new("127.0.0.1", 6381)));
        assert_eq!(redirect(&moved, "ASK"), None);
        let ask = fred::error::Error::new(ErrorKind::Cluster, "ASK 3999 [::1]:7000");
        assert_eq!(redirect(&ask, "ASK"), Some(Server::new("::1", 7000)));
        let other = fred::error::Error::new(ErrorKind::Unknown, "ERR unknown");
        assert_eq!(redirect(&other, "MOVED"), None);
    }
}
