//! HLS routing sessions: the token a playlist's URIs carry (`spbhid`), and
//! the store record that binds it to a stream and its origin, so every
//! segment request — on any replica — reaches the origin that wrote the
//! playlist.
//!
//! A token is created only once the origin has answered the playlist, so
//! requests for streams nobody publishes leave nothing behind.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::HttpError;
use crate::context::Context;
use crate::hls::{self, PlaylistError};
use crate::origin::Origin;
use crate::store::{Session, SessionKind};
use crate::stream_key::StreamKey;

/// One stream's tokens, by origin id.
type ByOrigin = HashMap<String, Handed>;

/// A token this replica hands out.
struct Handed {
    /// Shared with every playlist that carries it: handing it out again
    /// copies nothing.
    token: Arc<str>,
    /// A TTL after it was last handed out: until then it is handed out
    /// again. (Deadlines, not times: a comparison per request, not a
    /// subtraction.)
    live_until: Instant,
    /// A quarter TTL after the store last took its record: its record is
    /// renewed from then on.
    store_due: Option<Instant>,
    /// The last playlist rewritten to carry this token: every player of
    /// the stream reloading the same playlist shares one rewrite.
    last: Option<Rewritten>,
}

/// A playlist as the origin sent it and as rewritten for a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    from: Bytes,
    to: Bytes,
}

/// A token to put in a playlist.
#[derive(Debug, PartialEq, Eq)]
pub struct Token {
    pub text: Arc<str>,
    /// Its store record must be written (new, or not written for a
    /// quarter of the TTL): otherwise the record written less than a
    /// quarter of the TTL ago still has most of its life.
    pub store: bool,
    /// The last playlist rewritten with it, for [`HlsSessions::rewrite`].
    pub kept: Option<Rewritten>,
}

/// The tokens this replica handed out.
pub struct HlsSessions {
    /// The token handed out for each stream and origin, so a player that
    /// reloads a playlist without its token does not mint a new session
    /// every few seconds. Entries older than the session TTL are dropped.
    /// By stream, then origin id: a lookup borrows both, copying nothing.
    tokens: Mutex<HashMap<StreamKey, ByOrigin>>,
    /// Stream count at which the map is next pruned.
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
    /// one when there is none younger than the session TTL), and whether
    /// its store record is due: a player that reloads its playlist every
    /// few seconds costs one store write per quarter TTL, not one per
    /// reload. Nothing is stored until [`HlsSessions::record`].
    pub fn token_for(&self, key: &StreamKey, origin_id: &str) -> Token {
        let now = Instant::now();
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        // Prune when the map has doubled since the last prune, so a large
        // deployment does not scan every token on every playlist request.
        if tokens.len() >= self.prune_at.load(Ordering::Relaxed) {
            tokens.retain(|_, origins| {
                origins.retain(|_, handed| now < handed.live_until);
                !origins.is_empty()
            });
            self.prune_at.store((tokens.len() * 2).max(1024), Ordering::Relaxed);
        }
        if let Some(handed) = tokens
            .get_mut(key)
            .and_then(|origins| origins.get_mut(origin_id))
            .filter(|handed| now < handed.live_until)
        {
            handed.live_until = now + self.ttl;
            let store = handed.store_due.is_none_or(|due| now >= due);
            return Token {
                text: handed.token.clone(),
                store,
                kept: handed.last.clone(),
            };
        }
        let token: Arc<str> = hls::new_token().into();
        let handed = Handed {
            token: token.clone(),
            live_until: now + self.ttl,
            store_due: None,
            last: None,
        };
        tokens
            .entry(key.clone())
            .or_default()
            .insert(origin_id.to_string(), handed);
        Token {
            text: token,
            store: true,
            kept: None,
        }
    }

    /// The last playlist rewritten for `key` on `origin_id` with `token`
    /// (a token handed out by [`HlsSessions::token_for`] comes with it).
    pub fn kept(&self, key: &StreamKey, origin_id: &str, token: &str) -> Option<Rewritten> {
        self.with_handed(key, origin_id, token, |handed| handed.last.clone())
            .flatten()
    }

    /// `playlist` (from `origin_id`'s answer for `key`) with every URI
    /// carrying `token`. When `kept`, the last playlist rewritten for this
    /// stream, origin and token, had the same bytes, its rewrite is handed
    /// out again (shared, not copied); a new rewrite is kept for the next
    /// request while the token is this replica's.
    pub fn rewrite(
        &self,
        (key, origin_id): (&StreamKey, &str),
        token: &str,
        kept: Option<Rewritten>,
        playlist: &Bytes,
        max_uris: usize,
    ) -> Result<Bytes, PlaylistError> {
        if let Some(kept) = kept.filter(|kept| kept.from == playlist) {
            return Ok(kept.to);
        }
        let to = Bytes::from(hls::rewrite_playlist(playlist, token, max_uris)?);
        // A copy of the origin's bytes: `playlist` may be a slice of a
        // larger read buffer, which is not kept alive for the comparison.
        let from = Bytes::copy_from_slice(playlist);
        self.with_handed(key, origin_id, token, |handed| {
            handed.last = Some(Rewritten { from, to: to.clone() });
        });
        Ok(to)
    }

    /// Runs `f` on the entry of `key` on `origin_id` if it still hands out
    /// `token`.
    fn with_handed<T>(
        &self,
        key: &StreamKey,
        origin_id: &str,
        token: &str,
        f: impl FnOnce(&mut Handed) -> T,
    ) -> Option<T> {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens
            .get_mut(key)
            .and_then(|origins| origins.get_mut(origin_id))
            .filter(|handed| &*handed.token == token)
            .map(f)
    }

    /// Records `token` for `key` on `origin` in the store (or extends its
    /// record) for the session TTL, and notes when, for
    /// [`HlsSessions::token_for`].
    pub async fn record(&self, ctx: &Context, token: &str, key: &StreamKey, origin: &Origin) -> Result<(), HttpError> {
        let session = Session {
            key: key.clone(),
            origin_id: origin.id.to_string(),
            ice_pwd: None,
        };
        let due = Instant::now() + self.ttl / 4;
        ctx.store_op(
            "put_session",
            ctx.store.put_session(SessionKind::Hls, token, session, self.ttl),
        )
        .await?;
        self.with_handed(key, &origin.id, token, |handed| handed.store_due = Some(due));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(stream: &str) -> StreamKey {
        StreamKey::new("", "live", stream).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_lasts_while_it_is_used() {
        let sessions = HlsSessions::new(Duration::from_secs(10));
        let first = sessions.token_for(&key("a"), "o1").text;
        assert_eq!(sessions.token_for(&key("a"), "o1").text, first);
        assert_ne!(
            sessions.token_for(&key("a"), "o2").text,
            first,
            "another origin, another token"
        );
        assert_ne!(
            sessions.token_for(&key("b"), "o1").text,
            first,
            "another stream, another token"
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(
            sessions.token_for(&key("a"), "o1").text,
            first,
            "used within the TTL: kept"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_ne!(
            sessions.token_for(&key("a"), "o1").text,
            first,
            "unused for a TTL: replaced"
        );
    }

    /// The store record of a token a player keeps reloading is written
    /// once per quarter TTL, and whenever the last write is older; a token
    /// the store never took is written on every request.
    #[tokio::test(start_paused = true)]
    async fn a_reloaded_token_is_stored_once_per_quarter_ttl() {
        let ttl = Duration::from_secs(8);
        let ctx = Context::new(
            crate::config::Config::default(),
            crate::store::Store::Memory(crate::store::MemoryStore::new()),
        );
        let origin = Origin {
            id: "o1".into(),
            ip: "127.0.0.1".into(),
            ports: crate::origin::Ports::default(),
            source: crate::origin::OriginSource::Static,
            weight: 1,
            max_streams: 0,
            pool: None,
            registered_by: None,
        };
        let sessions = HlsSessions::new(ttl);
        let first = sessions.token_for(&key("a"), "o1");
        assert!(first.store, "a new token is stored");
        let again = sessions.token_for(&key("a"), "o1");
        assert_eq!(again, first, "nothing stored yet: still due");
        sessions.record(&ctx, &first.text, &key("a"), &origin).await.unwrap();
        let stored = ctx
            .store
            .touch_session(SessionKind::Hls, &first.text, ttl)
            .await
            .unwrap();
        assert_eq!(stored.map(|s| s.origin_id), Some("o1".to_string()));
        tokio::time::advance(Duration::from_millis(1999)).await;
        let reload = sessions.token_for(&key("a"), "o1");
        assert_eq!((&*reload.text, reload.store), (&*first.text, false));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(
            sessions.token_for(&key("a"), "o1").store,
            "a quarter TTL after the write: due again"
        );
        sessions.record(&ctx, &first.text, &key("a"), &origin).await.unwrap();
        assert!(!sessions.token_for(&key("a"), "o1").store);
        // Another stream's record does not count for this one.
        assert!(sessions.token_for(&key("b"), "o1").store);
    }

    /// Players of one stream reloading the same playlist share one
    /// rewrite; a changed playlist, another token or a token no longer
    /// handed out is rewritten anew.
    #[tokio::test(start_paused = true)]
    async fn the_same_playlist_is_rewritten_once_per_token() {
        let sessions = HlsSessions::new(Duration::from_secs(10));
        let a = key("a");
        // As a request does: what the token's entry kept, then the rewrite.
        let rewrite = |token: &str, playlist: &Bytes| {
            let kept = sessions.kept(&a, "o1", token);
            sessions.rewrite((&a, "o1"), token, kept, playlist, 10)
        };
        let first = Bytes::from_static(b"#EXTM3U\n#EXTINF:2,\na-1.ts\n");
        let token = sessions.token_for(&a, "o1").text;
        let once = rewrite(&token, &first).unwrap();
        assert_eq!(once, format!("#EXTM3U\n#EXTINF:2,\na-1.ts?spbhid={token}\n"));
        // The origin's answer arrives in a buffer of its own each time.
        let again = rewrite(&token, &Bytes::copy_from_slice(&first)).unwrap();
        assert_eq!(again.as_ptr(), once.as_ptr(), "the same bytes: the rewrite is shared");
        let handed = sessions.token_for(&a, "o1");
        let kept = handed.kept.clone().expect("the token comes with its last rewrite");
        let from_token = sessions
            .rewrite((&a, "o1"), &handed.text, Some(kept), &first, 10)
            .unwrap();
        assert_eq!(from_token.as_ptr(), once.as_ptr());
        let next = Bytes::from_static(b"#EXTM3U\n#EXTINF:2,\na-2.ts\n");
        let changed = rewrite(&token, &next).unwrap();
        assert_eq!(changed, format!("#EXTM3U\n#EXTINF:2,\na-2.ts?spbhid={token}\n"));
        let other = rewrite("other", &next).unwrap();
        assert_eq!(other, "#EXTM3U\n#EXTINF:2,\na-2.ts?spbhid=other\n");
        assert_eq!(
            rewrite(&token, &next).unwrap().as_ptr(),
            changed.as_ptr(),
            "another token's rewrite does not replace this one's"
        );
        assert!(
            rewrite(&token, &Bytes::from_static(b"<html>")).is_err(),
            "a bad playlist is refused, not kept"
        );
        assert_eq!(rewrite(&token, &next).unwrap().as_ptr(), changed.as_ptr());
        tokio::time::advance(Duration::from_secs(11)).await;
        let replaced = sessions.token_for(&a, "o1");
        assert_ne!(replaced.text, token);
        assert_eq!(replaced.kept, None, "a new token starts with nothing kept");
        let fresh = rewrite(&replaced.text, &next).unwrap();
        assert_eq!(fresh, format!("#EXTM3U\n#EXTINF:2,\na-2.ts?spbhid={}\n", replaced.text));
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_nobody_uses_are_pruned() {
        let sessions = HlsSessions::new(Duration::from_secs(10));
        for i in 0..1024 {
            sessions.token_for(&key(&format!("s{i}")), "o");
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        sessions.token_for(&key("new"), "o");
        let tokens = sessions.tokens.lock().unwrap();
        assert_eq!(tokens.len(), 1, "only the stream asked for since");
    }
}
