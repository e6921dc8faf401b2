//! HLS routing sessions: the token a playlist's URIs carry (`spbhid`), and
//! the store record that binds it to a stream and its origin, so every
//! segment request — on any replica — reaches the origin that wrote the
//! playlist.
//!
//! A token is created only once the origin has answered the playlist, so
//! requests for streams nobody publishes leave nothing behind.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::HttpError;
use crate::context::Context;
use crate::hls;
use crate::origin::Origin;
use crate::store::{Session, SessionKind};
use crate::stream_key::StreamKey;

/// The tokens this replica handed out.
pub struct HlsSessions {
    /// The token handed out for each (stream, origin), so a player that
    /// reloads a playlist without its token does not mint a new session
    /// every few seconds. Entries older than the session TTL are dropped.
    tokens: Mutex<HashMap<(StreamKey, String), (String, Instant)>>,
    /// Token count at which the map is next pruned.
    prune_at: AtomicUsize,
    /// A token older than this is replaced (the store forgets it then).
    ttl: Duration,
}

impl HlsSessions {
    pub fn new(ttl: Duration) -> Self {
        Self {
            tokens: Mutex::default(),
            prune_at: AtomicUsize::new(1024),
            ttl,
        }
    }

    /// The token this replica hands out for `key` on `origin_id` (a new
    /// one when there is none younger than the session TTL). Nothing is
    /// stored until [`HlsSessions::record`].
    pub fn token_for(&self, key: &StreamKey, origin_id: &str) -> String {
        let now = Instant::now();
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        // Prune when the map has doubled since the last prune, so a large
        // deployment does not scan every token on every playlist request.
        if tokens.len() >= self.prune_at.load(Ordering::Relaxed) {
            tokens.retain(|_, (_, at)| now.duration_since(*at) < self.ttl);
            self.prune_at.store((tokens.len() * 2).max(1024), Ordering::Relaxed);
        }
        let entry = tokens
            .entry((key.clone(), origin_id.to_string()))
            .or_insert_with(|| (hls::new_token(), now));
        if now.duration_since(entry.1) >= self.ttl {
            *entry = (hls::new_token(), now);
        }
        entry.1 = now;
        entry.0.clone()
    }

    /// Records `token` for `key` on `origin` in the store (or extends its
    /// record) for the session TTL.
    pub async fn record(&self, ctx: &Context, token: &str, key: &StreamKey, origin: &Origin) -> Result<(), HttpError> {
        let session = Session {
            key: key.clone(),
            origin_id: origin.id.clone(),
            ice_pwd: None,
        };
        ctx.store_op(
            "put_session",
            ctx.store.put_session(SessionKind::Hls, token, &session, self.ttl),
        )
        .await?;
        Ok(())
    }
}

/// The session `token` names and its origin, if both are still live; the
/// session's TTL is extended.
pub async fn resolve(ctx: &Context, token: &str) -> Result<Option<(Session, Origin)>, HttpError> {
    if !hls::is_valid_token(token) {
        return Ok(None);
    }
    let ttl = ctx.config.hls_session_ttl;
    let Some(session) = ctx
        .store_op("touch_session", ctx.store.touch_session(SessionKind::Hls, token, ttl))
        .await?
    else {
        return Ok(None);
    };
    let origin = ctx.store_op("origin", ctx.store.origin(&session.origin_id)).await?;
    Ok(origin.map(|o| (session, o)))
}
