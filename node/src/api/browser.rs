//! What keeps a web page on another site from using a browser's access to a node: CORS only
//! for the origins in `api.allowed_origins` and the API origins of the cluster's current
//! members (the admin UI served by one member calls another when its own stops answering),
//! the `Origin` of WebSocket upgrades and of every request but GET and HEAD checked against
//! them (a page of the node itself is always allowed), and security headers on every answer. JSON bodies must be sent as JSON
//! (`api::JsonBody`), so a plain HTML form cannot post one.

use std::sync::{Arc, OnceLock};

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::AppState;
use crate::config::Origins;
use crate::error::{ApiError, ErrorCode};

/// The CORS layer: preflights answered for `api.allowed_origins` and the members' API
/// origins, the answer headers a page may read exposed. For any other origin no CORS header
/// is sent.
pub fn cors(st: &Arc<AppState>) -> CorsLayer {
    let origins = &st.cluster.config().api.allowed_origins;
    let allow = if origins.0.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let st = st.clone();
        AllowOrigin::predicate(move |origin: &HeaderValue, _| {
            origin.to_str().is_ok_and(|o| {
                st.cluster.config().api.allowed_origins.allows(o) || is_member_origin(&st, o)
            })
        })
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
        ])
        .expose_headers([
            HeaderName::from_static("x-revision"),
            HeaderName::from_static("x-expires-in-ms"),
            header::RETRY_AFTER,
            header::WWW_AUTHENTICATE,
        ])
        .max_age(std::time::Duration::from_secs(600))
}

/// Whether `origin` is the API origin of a current member of the cluster.
fn is_member_origin(st: &AppState, origin: &str) -> bool {
    st.cluster
        .member_origins()
        .iter()
        .any(|m| m.eq_ignore_ascii_case(origin))
}

/// Whether a request with this `Origin` may go on: its own node's pages, an allowed origin or
/// a member's.
fn origin_allowed(st: &AppState, headers: &HeaderMap, origin: &str, allowed: &Origins) -> bool {
    if allowed.allows(origin) || is_member_origin(st, origin) {
        return true;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    !host.is_empty()
        && (origin.eq_ignore_ascii_case(&format!("http://{host}"))
            || origin.eq_ignore_ascii_case(&format!("https://{host}")))
}

/// The refusal of an upgrade or of a request that may change something whose `Origin` is
/// not allowed (none for any other request).
pub fn refused_origin(st: &AppState, req: &Request) -> Option<Response> {
    let checked = req.method() != Method::GET && req.method() != Method::HEAD
        || req.headers().contains_key(header::UPGRADE);
    if !checked {
        return None;
    }
    let origin = req.headers().get(header::ORIGIN)?;
    let origin = origin.to_str().unwrap_or("(not visible ASCII)");
    if origin_allowed(
        st,
        req.headers(),
        origin,
        &st.cluster.config().api.allowed_origins,
    ) {
        return None;
    }
    let e = ApiError::new(
        ErrorCode::Forbidden,
        format!("origin {origin} may not call this API (api.allowed_origins)"),
    );
    Some(e.into_response())
}

/// The security headers of every answer; a page that sets its own policy keeps it.
pub fn with_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; frame-ancestors 'none'",
        ));
    resp
}

/// The policy of the admin UI's pages: its own scripts and styles only, no inline ones, and
/// connections to this node and the other members (the UI moves to another member when this
/// one stops answering).
pub fn ui_policy(member_origins: &[String]) -> HeaderValue {
    let mut connect = String::from("'self'");
    for o in member_origins {
        // Origins are `scheme://host:port`; a WebSocket to the same host uses ws(s).
        let ws = o.replacen("http", "ws", 1);
        connect.push_str(&format!(" {o} {ws}"));
    }
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    HeaderValue::from_str(&policy)
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"))
}

/// The policy of the demo page: its own inline script (by hash) and `/v1/client.js`, and
/// connections to any node.
pub fn demo_page_policy(html: &str) -> HeaderValue {
    static POLICY: OnceLock<HeaderValue> = OnceLock::new();
    POLICY
        .get_or_init(|| {
            let hashes: Vec<String> = html
                .split("<script>")
                .skip(1)
                .filter_map(|rest| rest.split("</script>").next())
                .map(|script| {
                    let digest = Sha256::digest(script.as_bytes());
                    format!(
                        "'sha256-{}'",
                        base64::engine::general_purpose::STANDARD.encode(digest)
                    )
                })
                .collect();
            let policy = format!(
                "default-src 'self'; script-src 'self' {}; style-src 'self' 'unsafe-inline'; \
                 connect-src 'self' http: https: ws: wss:; frame-ancestors 'none'",
                hashes.join(" ")
            );
            HeaderValue::from_str(&policy).expect("the policy is visible ASCII")
        })
        .clone()
}
