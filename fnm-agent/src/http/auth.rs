//! Bearer-token authentication of the API and `/metrics`.
//!
//! The token is the first line of `token_file` (at least [`MIN_TOKEN_LEN`] printable ASCII
//! characters, e.g. `openssl rand -hex 32`). A request presents it as
//! `Authorization: Bearer <token>`; it is compared in constant time (only its length, fixed
//! when it is generated, can be learned from timing). What needs it is the listener's
//! [`Auth`]: the API asks for it on calls that change something, and on every call when it
//! listens beyond loopback; `/metrics` on every scrape once a token is set.

use super::HttpStats;
use axum::{
    extract::{Request, State},
    http::{header, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    Json,
};
use std::{
    io::Read as _,
    path::{Path, PathBuf},
    sync::{atomic::Ordering::Relaxed, Arc},
};
use subtle::ConstantTimeEq as _;

/// Shortest token accepted.
pub const MIN_TOKEN_LEN: usize = 16;
/// Largest token file read.
pub const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// It cannot be read.
    #[error("cannot read the token file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Its first line is empty.
    #[error("the token file {} is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The token is too short to resist guessing.
    #[error(
        "the token in {} is {len} characters long; at least {MIN_TOKEN_LEN} are needed (for \
         example: openssl rand -hex 32 > {})",
        path.display(),
        path.display()
    )]
    TooShort {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// The token has characters an HTTP header cannot carry as they are.
    #[error(
        "the token in {} has characters other than printable ASCII (no spaces or control \
         characters)",
        path.display()
    )]
    BadCharacters {
        /// The file.
        path: PathBuf,
    },
}

/// A bearer token.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// Reads the token from the first line of `path` (surrounding white space ignored).
    pub fn load(path: &Path) -> Result<Self, TokenError> {
        let read = |source| TokenError::Read {
            path: path.to_owned(),
            source,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(read)?
            .take(MAX_TOKEN_FILE_BYTES)
            .read_to_string(&mut text)
            .map_err(read)?;
        Self::parse(text.lines().next().unwrap_or_default(), path)
    }

    /// A token from text; `path` names its file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, TokenError> {
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenError::Empty {
                path: path.to_owned(),
            });
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::BadCharacters {
                path: path.to_owned(),
            });
        }
        if token.len() < MIN_TOKEN_LEN {
            return Err(TokenError::TooShort {
                path: path.to_owned(),
                len: token.len(),
            });
        }
        Ok(Self(token.into()))
    }

    /// The token, to send.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when `presented` is the token (constant time for a given length).
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }
}

/// True when `path` may be read by users other than its owner (Unix); the agent warns then.
pub fn readable_by_others(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

/// Who may call what on one listener.
#[derive(Clone, Debug)]
pub struct Auth {
    token: Option<Token>,
    every_request: bool,
    stats: Arc<HttpStats>,
}

impl Auth {
    /// No token: everything is allowed.
    pub fn open(stats: Arc<HttpStats>) -> Self {
        Self {
            token: None,
            every_request: false,
            stats,
        }
    }

    /// With `token`, calls that change something need it; with `every_request` every call does.
    pub fn new(token: Option<Token>, every_request: bool, stats: Arc<HttpStats>) -> Self {
        Self {
            token,
            every_request,
            stats,
        }
    }

    fn needs_token(&self, method: &Method) -> bool {
        self.every_request || !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
    }
}

/// The middleware: refuses with 401 a request that needs the token and does not carry it.
pub async fn require(State(auth): State<Auth>, req: Request, next: Next) -> Response {
    let Some(token) = &auth.token else {
        return next.run(req).await;
    };
    if !auth.needs_token(req.method()) {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| bearer(v.as_bytes()));
    match presented {
        Some(p) if token.matches(p) => next.run(req).await,
        _ => {
            auth.stats.unauthorized.fetch_add(1, Relaxed);
            let message = if presented.is_some() {
                "wrong bearer token"
            } else {
                "this call needs the header Authorization: Bearer <token> (the token is in the \
                 agent's token_file; the CLI reads it with --token-file or FNM_API_TOKEN_FILE)"
            };
            let mut res = (
                StatusCode::UNAUTHORIZED,
                Json(serde_json::json!({ "error": message })),
            )
                .into_response();
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"fnm\""),
            );
            res
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_when_loaded() {
        let p = Path::new("t");
        assert!(matches!(Token::parse("", p), Err(TokenError::Empty { .. })));
        assert!(matches!(
            Token::parse("short", p),
            Err(TokenError::TooShort { len: 5, .. })
        ));
        assert!(matches!(
            Token::parse("with a space inside it", p),
            Err(TokenError::BadCharacters { .. })
        ));
        let t = Token::parse("  0123456789abcdef0123\n", p).unwrap();
        assert!(t.matches(b"0123456789abcdef0123"));
        assert!(!t.matches(b"0123456789abcdef0124"));
        assert!(!t.matches(b"0123456789abcdef012"));
        assert_eq!(format!("{t:?}"), "Token(..)");
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bear"), None);
    }
}
