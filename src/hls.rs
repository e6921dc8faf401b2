//! HLS playlist rewriting (RFC 8216), pure text in, text out.
//!
//! Every URI in a playlist gets the routing token as a `spbhid` query
//! parameter (the Go proxy's name), so the player's next requests — media
//! segments of any extension, `EXT-X-MAP`, `EXT-X-KEY`, LL-HLS parts and
//! preload hints, variant playlists of a master playlist — reach the origin
//! that wrote the playlist. URIs are found by the playlist's grammar (URI
//! lines and `URI="…"` attributes), never by searching for `.ts`.
//!
//! URIs with a scheme (`http://`, `skd://`, `data:`) are left alone: they do
//! not come back through the proxy's path space, and the proxy never
//! fetches them.
//!
//! Every rewritten URI grows by the token, so a playlist of many tiny URIs
//! would grow many times over; the URI count is bounded, which bounds the
//! output to the input plus `max_uris` tokens.

/// Query parameter that carries the routing token.
pub const TOKEN_PARAM: &str = "spbhid";

/// Why a body is not a playlist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaylistError {
    #[error("playlist is not UTF-8")]
    NotUtf8,
    #[error("playlist does not start with #EXTM3U")]
    NoHeader,
    #[error("playlist has more than {0} URIs")]
    TooManyUris(usize),
}

/// Rewrites every URI of `playlist` to carry `token`; more than `max_uris`
/// URIs (of any kind) is an error.
pub fn rewrite_playlist(playlist: &[u8], token: &str, max_uris: usize) -> Result<String, PlaylistError> {
    let text = std::str::from_utf8(playlist).map_err(|_| PlaylistError::NotUtf8)?;
    let body = text.strip_prefix('\u{feff}').unwrap_or(text);
    if !body.trim_start().starts_with("#EXTM3U") {
        return Err(PlaylistError::NoHeader);
    }
    // Room for a token on every line: one allocation, however many URIs.
    let lines = body.bytes().filter(|&b| b == b'\n').count() + 1;
    let mut out = String::with_capacity(body.len() + lines * (TOKEN_PARAM.len() + token.len() + 2));
    let mut uris = 0;
    // Lines that stay as they are (blank lines, tags without a URI) are
    // copied in runs: `kept_from` is where the run not yet copied starts.
    let (mut kept_from, mut at) = (0, 0);
    for line in lines_inclusive(body) {
        let start = at;
        at += line.len();
        let (content, ending) = split_line_ending(line);
        let trimmed = trim(content);
        let is_tag = trimmed.starts_with('#');
        // A tag with no `URI` anywhere is written as it is by
        // `rewrite_tag`, so it needs no walk through its attributes.
        if trimmed.is_empty() || (is_tag && !mentions_uri(content)) {
            continue;
        }
        out.push_str(&body[kept_from..start]);
        kept_from = at;
        if is_tag {
            rewrite_tag(&mut out, content, token, &mut uris);
        } else {
            uris += 1;
            push_with_token(&mut out, trimmed, token);
        }
        if uris > max_uris {
            return Err(PlaylistError::TooManyUris(max_uris));
        }
        out.push_str(ending);
    }
    out.push_str(&body[kept_from..]);
    Ok(out)
}

/// `s.trim()`, faster for the usual line: ASCII whitespace off first, and
/// the Unicode rules only when what is left does not start and end with a
/// visible ASCII character.
fn trim(s: &str) -> &str {
    let t = s.trim_ascii();
    match (t.as_bytes().first(), t.as_bytes().last()) {
        (Some(a), Some(b)) if a.is_ascii_graphic() && b.is_ascii_graphic() => t,
        _ => t.trim(),
    }
}

/// Whether `URI` appears anywhere in a tag line.
fn mentions_uri(line: &str) -> bool {
    line.as_bytes().windows(3).any(|w| w == b"URI")
}

/// Where byte `b` (ASCII) first stands in `s`. Playlists are scanned with
/// this rather than `str::find(char)`, whose setup costs more than the
/// short lines it searches.
fn find_byte(s: &str, b: u8) -> Option<usize> {
    s.bytes().position(|c| c == b)
}

/// The lines of `s`, each with its `\n` (as `str::split_inclusive`).
fn lines_inclusive(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = s;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = find_byte(rest, b'\n').map_or(rest.len(), |i| i + 1);
        let (line, after) = rest.split_at(end);
        rest = after;
        Some(line)
    })
}

fn split_line_ending(line: &str) -> (&str, &str) {
    if let Some(c) = line.strip_suffix("\r\n") {
        (c, "\r\n")
    } else if let Some(c) = line.strip_suffix('\n') {
        (c, "\n")
    } else {
        (line, "")
    }
}

/// Writes a tag line to `out` with its `URI="…"` attribute rewritten,
/// wherever it stands in the attribute list, counting it in `uris`; other
/// tags pass through unchanged.
fn rewrite_tag(out: &mut String, line: &str, token: &str, uris: &mut usize) {
    let Some(colon) = find_byte(line, b':') else {
        out.push_str(line);
        return;
    };
    let (tag, attrs) = (&line[..colon + 1], &line[colon + 1..]);
    out.push_str(tag);
    let mut rest = attrs;
    // Walk attribute by attribute so a quoted value containing `URI=` or a
    // comma is never mistaken for an attribute boundary.
    loop {
        let name_end = find_byte(rest, b'=').unwrap_or(rest.len());
        let name = &rest[..name_end];
        if name_end == rest.len() || find_byte(name, b',').is_some() {
            // Not an attribute list (e.g. #EXTINF:10.0,title): copy as is.
            out.push_str(rest);
            break;
        }
        out.push_str(name);
        out.push('=');
        let after = &rest[name_end + 1..];
        let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            match find_byte(quoted, b'"') {
                Some(end) => (&after[..end + 2], &after[end + 2..]),
                None => (after, ""),
            }
        } else {
            let end = find_byte(after, b',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if name.trim() == "URI" && value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
            *uris += 1;
            out.push('"');
            push_with_token(out, &value[1..value.len() - 1], token);
            out.push('"');
        } else {
            out.push_str(value);
        }
        match remainder.strip_prefix(',') {
            Some(next) => {
                out.push(',');
                rest = next;
            }
            None => {
                out.push_str(remainder);
                break;
            }
        }
    }
}

fn has_scheme(uri: &str) -> bool {
    match find_byte(uri, b':') {
        Some(i) => {
            let scheme = &uri[..i];
            !scheme.is_empty()
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
                && find_byte(&uri[..i], b'/').is_none()
        }
        None => false,
    }
}

/// Adds (or replaces) `spbhid=token` in a relative or absolute-path URI,
/// keeping its other query parameters and fragment byte for byte (they are
/// split, never decoded and re-encoded: the origin reads them back).
pub fn with_token(uri: &str, token: &str) -> String {
    let mut out = String::with_capacity(uri.len() + TOKEN_PARAM.len() + token.len() + 2);
    push_with_token(&mut out, uri, token);
    out
}

/// [`with_token`], written to the end of `out`.
fn push_with_token(out: &mut String, uri: &str, token: &str) {
    if uri.starts_with("//") || has_scheme(uri) {
        out.push_str(uri);
        return;
    }
    let (before_fragment, fragment) = match find_byte(uri, b'#') {
        Some(i) => (&uri[..i], &uri[i..]),
        None => (uri, ""),
    };
    let (path, query) = match find_byte(before_fragment, b'?') {
        Some(i) => (&before_fragment[..i], Some(&before_fragment[i + 1..])),
        None => (before_fragment, None),
    };
    out.push_str(path);
    out.push('?');
    let kept = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|p| !p.is_empty() && p.split('=').next() != Some(TOKEN_PARAM));
    for param in kept {
        out.push_str(param);
        out.push('&');
    }
    out.push_str(TOKEN_PARAM);
    out.push('=');
    out.push_str(token);
    out.push_str(fragment);
}

/// The routing token of a request's query string, if any.
pub fn token_from_query(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, v)| k == TOKEN_PARAM && !v.is_empty())
        .map(|(_, v)| v.into_owned())
}

/// A fresh unguessable token: 128 random bits, hex.
pub fn new_token() -> String {
    let bits: u128 = rand::random();
    format!("{bits:032x}")
}

/// Whether a token has the shape [`new_token`] makes; anything else is not
/// looked up in the store.
pub fn is_valid_token(token: &str) -> bool {
    token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rewrite line by line, every line through the general rules:
    /// the oracle for `rewrite_playlist`'s runs and shortcuts.
    fn rewrite_line_by_line(playlist: &str, token: &str, max_uris: usize) -> Result<String, PlaylistError> {
        let body = playlist.strip_prefix('\u{feff}').unwrap_or(playlist);
        if !body.trim_start().starts_with("#EXTM3U") {
            return Err(PlaylistError::NoHeader);
        }
        let (mut out, mut uris) = (String::new(), 0);
        for line in body.split_inclusive('\n') {
            let (content, ending) = split_line_ending(line);
            match content.trim() {
                "" => out.push_str(content),
                tag if tag.starts_with('#') => rewrite_tag(&mut out, content, token, &mut uris),
                uri => {
                    uris += 1;
                    push_with_token(&mut out, uri, token);
                }
            }
            if uris > max_uris {
                return Err(PlaylistError::TooManyUris(max_uris));
            }
            out.push_str(ending);
        }
        Ok(out)
    }

    proptest::proptest! {
        #[test]
        fn runs_and_shortcuts_rewrite_as_line_by_line(
            lines in proptest::collection::vec(
                proptest::sample::select(vec![
                    "#EXTINF:2.0,", "#EXT-X-VERSION:3", "#EXT-X-MAP:URI=\"init.mp4\"", " seg-1.ts ",
                    "seg-2.ts?a=1#f", "#EXT-X-KEY:METHOD=AES-128,URI=\"k\",IV=0x1", "#X:A=\"URI=,\",URI=u",
                    "", " ", "\u{a0}x.ts\u{3000}", "\u{b}y.ts", "\u{c}", "URI", "http://h/s.ts", "\r", "#URI",
                ]),
                0..10,
            ),
            endings in proptest::collection::vec(proptest::sample::select(vec!["\n", "\r\n"]), 10),
            max_uris in 0usize..4,
        ) {
            let mut text = String::from("#EXTM3U\n");
            for (line, ending) in lines.iter().zip(&endings) {
                text.push_str(line);
                text.push_str(ending);
            }
            if let Some(last) = lines.last() {
                text.push_str(last);
            }
            proptest::prop_assert_eq!(
                rewrite_playlist(text.as_bytes(), T, max_uris),
                rewrite_line_by_line(&text, T, max_uris)
            );
        }

        #[test]
        fn trim_is_str_trim(s in "[ \t\r\u{b}\u{c}\u{85}\u{a0}\u{3000}a#é]{0,8}") {
            proptest::prop_assert_eq!(trim(&s), s.trim());
        }
    }

    const T: &str = "0123456789abcdef0123456789abcdef";
    const MAX: usize = 10_000;

    #[test]
    fn the_output_is_bounded_by_the_uri_count() {
        // The amplification attack: a megabyte of one-character URIs.
        let mut p = String::from("#EXTM3U\n");
        while p.len() < 1024 * 1024 {
            p.push_str("a\n");
        }
        assert_eq!(
            rewrite_playlist(p.as_bytes(), T, MAX),
            Err(PlaylistError::TooManyUris(MAX))
        );
        // At the limit the output is the input plus one token per URI.
        let mut p = String::from("#EXTM3U\n#EXT-X-MAP:URI=\"i.mp4\"\n");
        for i in 0..MAX - 1 {
            p.push_str(&format!("s{i}.m4s\n"));
        }
        let out = rewrite_playlist(p.as_bytes(), T, MAX).unwrap();
        assert_eq!(out.len(), p.len() + MAX * format!("?{TOKEN_PARAM}={T}").len());
        p.push_str("one-more.m4s\n");
        assert_eq!(
            rewrite_playlist(p.as_bytes(), T, MAX),
            Err(PlaylistError::TooManyUris(MAX))
        );
    }

    #[test]
    fn media_playlist_ts() {
        let p = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:12\n#EXTINF:9.97, no desc\nlivestream-12.ts\n#EXTINF:10.0,\nlivestream-13.ts?foo=bar\n";
        let out = rewrite_playlist(p.as_bytes(), T, MAX).unwrap();
        assert!(out.contains(&format!("\nlivestream-12.ts?spbhid={T}\n")), "{out}");
        assert!(
            out.contains(&format!("\nlivestream-13.ts?foo=bar&spbhid={T}\n")),
            "{out}"
        );
        assert!(out.contains("#EXTINF:9.97, no desc\n"));
        assert_eq!(out.lines().count(), p.lines().count());
    }

    #[test]
    fn fmp4_map_key_parts_and_hints() {
        let p = concat!(
            "#EXTM3U\r\n",
            "#EXT-X-MAP:URI=\"init.mp4\",BYTERANGE=\"720@0\"\r\n",
            "#EXT-X-KEY:METHOD=AES-128,URI=\"/keys/k1.key?x=1\",IV=0x1234\r\n",
            "#EXT-X-KEY:METHOD=SAMPLE-AES,URI=\"skd://key-id\",KEYFORMAT=\"com.apple.streamingkeydelivery\"\r\n",
            "#EXT-X-PART:DURATION=0.5,URI=\"seg7.part1.m4s\",INDEPENDENT=YES\r\n",
            "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"seg7.part2.m4s\"\r\n",
            "#EXTINF:4.0,\r\n",
            "segment.ts.backup-7.m4s\r\n",
            "#EXT-X-DATERANGE:ID=\"a\",X-COM-URI=\"URI=x\",START-DATE=\"2020-01-01T00:00:00Z\"\r\n",
        );
        let out = rewrite_playlist(p.as_bytes(), T, MAX).unwrap();
        assert!(
            out.contains(&format!(
                "#EXT-X-MAP:URI=\"init.mp4?spbhid={T}\",BYTERANGE=\"720@0\"\r\n"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!("URI=\"/keys/k1.key?x=1&spbhid={T}\",IV=0x1234")),
            "{out}"
        );
        assert!(out.contains("URI=\"skd://key-id\""), "scheme URIs untouched: {out}");
        assert!(out.contains(&format!("URI=\"seg7.part1.m4s?spbhid={T}\",INDEPENDENT=YES")));
        assert!(out.contains(&format!("URI=\"seg7.part2.m4s?spbhid={T}\"")));
        assert!(out.contains(&format!("\r\nsegment.ts.backup-7.m4s?spbhid={T}\r\n")));
        assert!(
            out.contains("X-COM-URI=\"URI=x\""),
            "quoted values are not attributes: {out}"
        );
        assert!(out.ends_with("\r\n"));
    }

    #[test]
    fn master_playlist() {
        let p = "#EXTM3U\n#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aud\",NAME=\"en\",URI=\"audio/en.m3u8\"\n#EXT-X-STREAM-INF:BANDWIDTH=1280000,CODECS=\"avc1.4d401f,mp4a.40.2\",AUDIO=\"aud\"\nlow/index.m3u8\n#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=86000,URI=\"low/iframe.m3u8\"\nhttps://cdn.example.com/high.m3u8\n";
        let out = rewrite_playlist(p.as_bytes(), T, MAX).unwrap();
        assert!(out.contains(&format!("URI=\"audio/en.m3u8?spbhid={T}\"")));
        assert!(out.contains(&format!("\nlow/index.m3u8?spbhid={T}\n")));
        assert!(out.contains(&format!("URI=\"low/iframe.m3u8?spbhid={T}\"")));
        assert!(out.contains("CODECS=\"avc1.4d401f,mp4a.40.2\""));
        assert!(out.contains("\nhttps://cdn.example.com/high.m3u8\n"));
    }

    #[test]
    fn existing_token_is_replaced_not_duplicated() {
        assert_eq!(with_token("a.ts?spbhid=old&x=1", T), format!("a.ts?x=1&spbhid={T}"));
        assert_eq!(with_token("a.ts#frag", T), format!("a.ts?spbhid={T}#frag"));
        assert_eq!(with_token("/live/a.ts", T), format!("/live/a.ts?spbhid={T}"));
        assert_eq!(with_token("//cdn/a.ts", T), "//cdn/a.ts");
        assert_eq!(with_token("data:text/plain,x", T), "data:text/plain,x");
        assert_eq!(
            with_token("seg:1.ts", T),
            "seg:1.ts",
            "a colon before any slash reads as a scheme"
        );
        assert_eq!(with_token("dir/seg:1.ts", T), format!("dir/seg:1.ts?spbhid={T}"));
    }

    #[test]
    fn rejects_non_playlists() {
        assert_eq!(rewrite_playlist(b"<html>", T, MAX), Err(PlaylistError::NoHeader));
        assert_eq!(rewrite_playlist(&[0xff, 0xfe], T, MAX), Err(PlaylistError::NotUtf8));
        assert!(rewrite_playlist("\u{feff}#EXTM3U\n".as_bytes(), T, MAX).is_ok());
    }

    #[test]
    fn tokens() {
        let a = new_token();
        assert!(is_valid_token(&a));
        assert_ne!(a, new_token());
        assert!(!is_valid_token("../x"));
        assert_eq!(token_from_query(Some(&format!("a=1&spbhid={T}"))).as_deref(), Some(T));
        assert_eq!(token_from_query(Some("spbhid=")), None);
        assert_eq!(token_from_query(None), None);
    }

    #[test]
    fn attribute_walk_survives_garbage() {
        for line in [
            "#EXT-X-KEY:URI=\"unterminated",
            "#EXT-X-KEY:=,=,URI",
            "#EXTINF:,",
            "#EXT-X-MAP:URI=",
            "#:",
        ] {
            let p = format!("#EXTM3U\n{line}\n");
            rewrite_playlist(p.as_bytes(), T, MAX).unwrap();
        }
    }

    proptest::proptest! {
        /// The playlist's own scanning agrees with the standard library's.
        #[test]
        fn byte_scanning_agrees_with_str(text in "[a-z:=,#?/\"\r\n\u{e9}\u{2028} ]{0,64}") {
            let ours: Vec<&str> = lines_inclusive(&text).collect();
            let std: Vec<&str> = text.split_inclusive('\n').collect();
            proptest::prop_assert_eq!(ours, std);
            for b in [b':', b'=', b',', b'#', b'?', b'/', b'"', b'\n'] {
                proptest::prop_assert_eq!(find_byte(&text, b), text.find(b as char));
            }
        }
    }
}
