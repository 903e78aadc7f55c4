//! `Idempotency-Key`: a retried write is answered from its first answer and applied once.
//!
//! A key belongs to a scope ([`scope`]: the caller), so two callers that pick the same key
//! never see each other's answers, and it is bound to the request it was
//! first sent with: [`with_fingerprint`] digests the method, path, query and body of every
//! request that carries the header, and the write carries that digest
//! ([`raft::command::IdemKey`]). The replicated state compares it with the one remembered
//! under the key, so the check is the same on every replica: the same request is answered
//! from the first answer, another one is refused with 422 `idempotency_mismatch`.

use axum::body::Body;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use raft::command::IdemKey;
use sha2::{Digest, Sha256};

use super::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorCode};

const HEADER: &str = "idempotency-key";

/// The `Idempotency-Key` header of a write, as the API reference lists it (read by
/// [`Idempotency`]).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub(crate) struct IdempotencyKey {
    /// 1 to 256 visible ASCII characters. A key belongs to the caller (its token, or a JWT's
    /// provider and subject; with access control off, the Authorization header as sent) and to
    /// the request it was first sent with (method, path, query and body): for 10 minutes, the same request with
    /// the same key is answered with the first answer and applied once, and a different
    /// request with that key is refused with 422 idempotency_mismatch
    #[param(rename = "Idempotency-Key")]
    #[allow(dead_code)]
    key: Option<String>,
}

/// The digest of a request that carries an `Idempotency-Key`, left in its extensions by
/// [`with_fingerprint`].
#[derive(Clone, Copy)]
struct Fingerprint([u8; 32]);

/// Run in front of every route's handler, behind the access check (so nobody it refuses has
/// a body read; see `api::admit`): a request with an `Idempotency-Key` has its body read (at
/// most the JSON body limit, else 413) and its [`Fingerprint`] recorded; the handler reads
/// the same body.
pub(crate) async fn with_fingerprint(st: &AppState, req: Request) -> Result<Request, Response> {
    if !req.headers().contains_key(HEADER) {
        return Ok(req);
    }
    let limit = super::json_body_limit(st);
    let (mut parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return Err(
            ApiError::too_large(format!("body is over the {limit}-byte limit"))
                .with("limit", limit)
                .into_response(),
        );
    };
    let digest = fingerprint(&parts.method, &parts.uri, &bytes);
    parts.extensions.insert(Fingerprint(digest));
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// SHA-256 of the method, the path, the query and the body. The first three cannot hold a
/// newline, which separates them.
fn fingerprint(method: &Method, uri: &Uri, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [method.as_str(), uri.path(), uri.query().unwrap_or("")] {
        h.update(part.as_bytes());
        h.update(b"\n");
    }
    h.update(body);
    h.finalize().into()
}

/// Whom an `Idempotency-Key` belongs to: keys of two scopes never meet. The caller, as the
/// access check found it (`auth::Caller`): a token by its accessor id, a JWT by its provider
/// and subject (so a refreshed JWT keeps its keys); with access control off, the
/// `Authorization` header as sent (`anonymous` without one). SHA-256 (hex), each kind with its
/// own prefix (`\0` is in no header value), so no two kinds meet either.
pub(crate) fn scope(parts: &Parts) -> String {
    let mut h = Sha256::new();
    match parts.extensions.get::<Caller>() {
        Some(Caller::Token(t)) => {
            h.update(b"token\0");
            h.update(t.accessor_id.as_bytes());
        }
        Some(Caller::Jwt(j)) => {
            h.update(b"jwt\0");
            h.update(j.actor.as_bytes());
        }
        Some(Caller::Anyone) | None => {
            let mut values = parts
                .headers
                .get_all(header::AUTHORIZATION)
                .iter()
                .peekable();
            if values.peek().is_none() {
                return "anonymous".into();
            }
            for v in values {
                h.update(v.as_bytes());
                h.update(b"\n");
            }
        }
    }
    hex::encode(h.finalize())
}

/// The `Idempotency-Key` of a write, scoped and bound to its request; `None` without the
/// header. A malformed key is a 400.
pub struct Idempotency(pub Option<IdemKey>);

impl<S: Send + Sync> FromRequestParts<S> for Idempotency {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(key) = key(&parts.headers)? else {
            return Ok(Idempotency(None));
        };
        let Some(&Fingerprint(fingerprint)) = parts.extensions.get::<Fingerprint>() else {
            // `api::admit` runs `with_fingerprint` in front of every route's handler.
            return Err(ApiError::new(
                ErrorCode::Internal,
                "the request's fingerprint was not recorded",
            ));
        };
        Ok(Idempotency(Some(IdemKey {
            key: format!("{}:{key}", scope(parts)),
            fingerprint,
        })))
    }
}

/// The key of a write this node proposes and retries itself (not a client's): in a scope of its
/// own (`node`, which no credential's digest can be), bound to the command it carries.
pub(crate) fn own_key(key: &str, command: &impl serde::Serialize) -> IdemKey {
    let encoded = raft::codec::encode(command).expect("commands are plain serde types");
    IdemKey {
        key: format!("node:{key}"),
        fingerprint: Sha256::digest(&encoded).into(),
    }
}

/// The header's value: 1 to 256 visible ASCII characters.
fn key(headers: &HeaderMap) -> ApiResult<Option<&str>> {
    let Some(v) = headers.get(HEADER) else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?;
    if s.is_empty() || s.len() > 256 {
        return Err(ApiError::bad_request(
            "Idempotency-Key must be 1 to 256 characters",
        ));
    }
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(auth: &[&str]) -> Parts {
        let mut b = axum::http::Request::builder().uri("/v1/sessions");
        for a in auth {
            b = b.header(header::AUTHORIZATION, *a);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn without_access_control_the_scope_is_the_authorization_header() {
        assert_eq!(scope(&parts(&[])), "anonymous");
        let x = scope(&parts(&["Bearer x"]));
        assert_eq!(x.len(), 64);
        assert_eq!(x, scope(&parts(&["Bearer x"])));
        assert_ne!(x, scope(&parts(&["Bearer y"])));
        assert_ne!(x, scope(&parts(&["Bearer x", "Bearer y"])));
    }

    #[test]
    fn the_fingerprint_covers_method_path_query_and_body() {
        let f = |m: Method, uri: &str, body: &[u8]| fingerprint(&m, &uri.parse().unwrap(), body);
        let base = f(Method::POST, "/v1/kv/a?ttl_ms=1", b"x");
        assert_eq!(base, f(Method::POST, "/v1/kv/a?ttl_ms=1", b"x"));
        assert_ne!(base, f(Method::PUT, "/v1/kv/a?ttl_ms=1", b"x"));
        assert_ne!(base, f(Method::POST, "/v1/kv/b?ttl_ms=1", b"x"));
        assert_ne!(base, f(Method::POST, "/v1/kv/a?ttl_ms=2", b"x"));
        assert_ne!(base, f(Method::POST, "/v1/kv/a?ttl_ms=1", b"y"));
        assert_ne!(base, f(Method::POST, "/v1/kv/a", b"ttl_ms=1\nx"));
    }
}
