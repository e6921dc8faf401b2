//! Static files under `PROXY_STATIC_FILES` (players, test pages).
//!
//! A request can only ever read a regular file inside the configured
//! directory: the decoded path is rejected if it holds `..`, and the
//! resolved file (symlinks followed) must still lie under the directory's
//! resolved path. Files are streamed, never read whole.

use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use percent_encoding::percent_decode_str;
use tokio_util::io::ReaderStream;

use super::{full, Body, BoxError, HttpError};

fn content_type(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("ico") => "image/x-icon",
        Some("wasm") => "application/wasm",
        Some("map") => "application/json",
        _ => "application/octet-stream",
    }
}

/// Resolves a URL path to a file under `root`, or says why not.
pub fn resolve(root: &Path, url_path: &str) -> Result<PathBuf, HttpError> {
    let decoded = percent_decode_str(url_path)
        .decode_utf8()
        .map_err(|_| HttpError::new(StatusCode::BAD_REQUEST, "path is not valid UTF-8"))?;
    let relative = Path::new(decoded.trim_start_matches('/'));
    for component in relative.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            _ => {
                return Err(HttpError::new(
                    StatusCode::BAD_REQUEST,
                    "path escapes the static directory",
                ))
            }
        }
    }
    if decoded.contains('\0') {
        return Err(HttpError::new(StatusCode::BAD_REQUEST, "path contains NUL"));
    }
    let root = root.canonicalize().map_err(|e| HttpError {
        detail: Some(format!("{}: {e}", root.display())),
        ..HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, "static directory unusable")
    })?;
    let mut candidate = root.join(relative);
    if candidate.is_dir() {
        candidate.push("index.html");
    }
    let not_found = || HttpError::new(StatusCode::NOT_FOUND, format!("no such file: {url_path}"));
    let resolved = candidate.canonicalize().map_err(|_| not_found())?;
    // A symlink inside the directory may point anywhere; judge the target.
    if !resolved.starts_with(&root) {
        return Err(HttpError::new(
            StatusCode::FORBIDDEN,
            "path leads outside the static directory",
        ));
    }
    if !resolved.is_file() {
        return Err(not_found());
    }
    Ok(resolved)
}

/// Serves a static file, or 404 when static files are off.
pub async fn handle<B>(root: Option<&Path>, req: &Request<B>) -> Result<Response<Body>, HttpError> {
    let path = req.uri().path();
    let Some(root) = root else {
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            format!("{path} is not a stream (expected .flv, .ts, .m3u8 or an HLS segment)"),
        ));
    };
    let file_path = resolve(root, path)?;
    let file = tokio::fs::File::open(&file_path)
        .await
        .map_err(|_| HttpError::new(StatusCode::NOT_FOUND, format!("no such file: {path}")))?;
    let len = file.metadata().await.map(|m| m.len()).ok();
    let body: Body = if req.method() == Method::HEAD {
        full(Bytes::new())
    } else {
        let stream = ReaderStream::new(file)
            .map_ok(Frame::data)
            .map_err(|e| Box::new(e) as BoxError);
        StreamBody::new(stream).boxed_unsync()
    };
    let mut resp = Response::new(body);
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(&file_path)));
    if let Some(len) = len {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_inside_the_directory() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("www");
        std::fs::create_dir_all(root.join("players")).unwrap();
        std::fs::write(root.join("players/index.html"), "hi").unwrap();
        std::fs::write(outer.path().join("secret.txt"), "no").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(outer.path().join("secret.txt"), root.join("link.txt")).unwrap();

        assert!(resolve(&root, "/players/index.html").is_ok());
        assert!(resolve(&root, "/players/").unwrap().ends_with("players/index.html"));
        for (path, status) in [
            ("/../secret.txt", 400),
            ("/players/../../secret.txt", 400),
            ("/%2e%2e/secret.txt", 400),
            ("/%2E%2E%2fsecret.txt", 400),
            ("/link.txt", 403),
            ("/missing.html", 404),
            ("/%ff", 400),
        ] {
            let err = resolve(&root, path).unwrap_err();
            assert_eq!(err.status.as_u16(), status, "{path}: {}", err.reason);
        }
    }
}
