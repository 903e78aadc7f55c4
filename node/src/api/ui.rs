//! The admin UI at `/ui/`: the files of the `admin-ui` crate, served to anyone (they hold no
//! data: every figure the UI shows comes from the token-protected API), each page with a
//! policy that lets it run only its own scripts and talk only to the cluster's members.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

use super::{browser, AppState, PathParams, St};

/// Redirect to /ui/
#[utoipa::path(
    get,
    path = "/ui",
    responses(
        (status = 308, description = "to /ui/"),
    )
)]
pub async fn redirect() -> Redirect {
    Redirect::permanent("/ui/")
}

/// The admin UI (log in with a token)
#[utoipa::path(
    get,
    path = "/ui/",
    responses(
        (status = 200, description = "HTML", content_type = "text/html", body = String),
    )
)]
pub async fn index(State(st): St) -> Response {
    serve(&st, admin_ui::index())
}

/// A file of the admin UI; a name without an extension is the UI's page (its own routes)
#[utoipa::path(
    get,
    path = "/ui/{file}",
    params(
        ("file" = String, Path, description = "e.g. app.js"),
    ),
    responses(
        (status = 200, description = "the file", body = String),
        crate::error::NotFound,
    )
)]
pub async fn file(State(st): St, PathParams(name): PathParams<String>) -> Response {
    match admin_ui::get(&name) {
        Some(f) => serve(&st, f),
        None if !name.contains('.') => serve(&st, admin_ui::index()),
        None => super::not_found().await.into_response(),
    }
}

/// Unknown routes: a GET deeper under `/ui/` is the UI's page, anything else 404.
pub async fn fallback(State(st): St, req: Request) -> Response {
    let path = req.uri().path();
    if req.method() == Method::GET && path.starts_with("/ui/") && !path.contains('.') {
        return serve(&st, admin_ui::index());
    }
    super::not_found().await.into_response()
}

fn serve(st: &Arc<AppState>, f: &'static admin_ui::File) -> Response {
    let mut resp = (StatusCode::OK, f.bytes).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(f.content_type),
    );
    // A new build of the node serves new files under the same names.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        browser::ui_policy(&st.cluster.member_origins()),
    );
    resp
}
