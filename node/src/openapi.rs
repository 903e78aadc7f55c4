//! The API reference served at `/v1/openapi.json`, generated from the handlers'
//! `#[utoipa::path]` annotations and the types of `api::model` and `error`. The operations
//! come from the route table itself (`api::RouteDoc`), so a route cannot be served without
//! being documented.

use std::sync::OnceLock;

use serde_json::{json, Value};
use utoipa::OpenApi;

use crate::auth::{Need, Target};

use crate::error::{ErrorBody, ErrorCode};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "stackd API",
        version = "1",
        description = "Every node serves every endpoint; writes are forwarded to the leader. \
Reads are linearizable unless consistency=stale. Errors: {\"error\": {\"code\", \"message\", ...}} \
with the status of the code (the ErrorCode schema): 400 bad_request, 401 unauthenticated, 403 forbidden, 404 not_found, \
405 method_not_allowed, 408 request_timeout (the body did not arrive within \
api.body_read_timeout_ms; not applied), 409 conflict (compare, fence or lease; reason, current_revision, \
current_fence, current_lease, holder tell which), 413 too_large, 422 idempotency_mismatch, \
429 rate_limited, 500 internal, 507 quota_exceeded (the storage quota is reached and the write \
would grow the state; not applied), 503 unavailable (Retry-After; not applied), 504 timeout \
(outcome unknown); the WebSocket also sends compacted, slow_consumer, going_away and \
idle_timeout. Writes \
accept an Idempotency-Key header (1..256 chars, remembered 10 minutes, scoped to the \
caller (its token, or a JWT's provider and subject) and bound to the request's method, path, \
query and body: the same key with a different request is 422 idempotency_mismatch). Fenced writes take \
fence=LOCK:F and apply only while lock LOCK is held with fence F. Values are at most \
max_value_bytes (default 1 MiB); listings return at most 1000 items."
    ),
    components(schemas(ErrorBody, ErrorCode))
)]
pub struct ApiDoc;

/// The document as served, built once.
pub fn document_json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = ApiDoc::openapi();
        doc.merge(crate::api::RouteDoc::openapi());
        let mut doc = serde_json::to_value(doc).expect("the OpenAPI document serializes");
        document_access(&mut doc);
        doc.to_string()
    })
}

/// Adds what each route needs (from the route table) to its operation: the bearer security
/// scheme, 401 and 403 answers, and a line saying which right it checks; and the answers
/// every route may give: 429 (rate and count limits) where the route documents none of its
/// own, 408 where it takes a body.
fn document_access(doc: &mut Value) {
    doc["components"]["securitySchemes"]["bearer"] = json!({
        "type": "http",
        "scheme": "bearer",
        "description": "A token secret: Authorization: Bearer <secret>. Made by the founding \
    node (bootstrap-token in its data dir) or POST /v1/acl/tokens."
    });
    let error = |what: &str| {
        json!({
            "description": what,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        })
    };
    for (method, path, need) in crate::api::ROUTES {
        let op = &mut doc["paths"][*path][*method];
        if op["responses"].get("429").is_none() {
            op["responses"]["429"] = error(
                "rate_limited: a request rate (Retry-After) or a count limit of the cluster \
                 (setting names it, limit gives its value) was reached; nothing was applied",
            );
        }
        if op.get("requestBody").is_some() {
            op["responses"]["408"] = error(
                "request_timeout: the body did not arrive within api.body_read_timeout_ms; \
                 nothing was applied",
            );
        }
        let Some(right) = (match need {
            Need::Open => continue,
            Need::Token => Some("a valid token; each write it makes is checked".to_string()),
            Need::Upgrade => Some(
                "a token in the Authorization header or the first message ({op:auth, token}); \
                 each subscription, watch and publish is checked"
                    .to_string(),
            ),
            Need::Metrics => Some("read on cluster (or none with api.metrics_open)".to_string()),
            Need::Right {
                resource,
                op,
                target,
            } => Some(format!(
                "{} on {} ({})",
                op.as_str(),
                resource.as_str(),
                match target {
                    Target::Path(p) => format!("the name in {{{p}}}"),
                    Target::Query(q) => format!("the name in the {q} parameter"),
                    Target::Prefix(q) => format!("every name under the {q} parameter"),
                    Target::All => "every name".to_string(),
                    Target::JobQueue(_) => "the job's queue".to_string(),
                    Target::SessionUser(_) => "the session's user".to_string(),
                }
            )),
        }) else {
            continue;
        };
        op["security"] = json!([{"bearer": []}]);
        op["x-stackd-needs"] = json!(right);
        op["responses"]["401"] =
            error("unauthenticated: no token, or a malformed, unknown, deleted or expired one");
        op["responses"]["403"] =
            error("forbidden: the token's policies lack the right (resource and access say which)");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use serde_json::Value;

    use crate::api::ROUTES;
    use crate::error::ErrorCode;

    fn doc() -> Value {
        serde_json::from_str(super::document_json()).unwrap()
    }

    /// `{name}` segments of a path template, in order.
    fn path_params(path: &str) -> Vec<String> {
        path.split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(str::to_string)
            .collect()
    }

    /// Every string in an `enum` array anywhere under `v`.
    fn enum_values(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if k == "enum" {
                        for s in x.as_array().unwrap() {
                            out.insert(s.as_str().unwrap().to_string());
                        }
                    } else {
                        enum_values(x, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| enum_values(x, out)),
            _ => {}
        }
    }

    #[test]
    fn document_matches_the_routes() {
        let doc = doc();
        let paths = doc["paths"].as_object().unwrap();
        let mut routed: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (method, path, _) in ROUTES {
            assert!(
                routed.entry(path).or_default().insert(method),
                "{method} {path} twice in ROUTES"
            );
            let op = &paths
                .get(*path)
                .unwrap_or_else(|| panic!("{path} is routed but not documented"))[*method];
            assert!(
                op.is_object(),
                "{method} {path} is routed but not documented"
            );
            let documented: Vec<String> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .map(|p| p["name"].as_str().unwrap().to_string())
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(
                documented,
                path_params(path),
                "{method} {path}: documented path parameters"
            );
        }
        for (path, item) in paths {
            let methods = routed
                .get(path.as_str())
                .unwrap_or_else(|| panic!("{path} is documented but not routed"));
            for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
                if item.get(method).is_some() {
                    assert!(
                        methods.contains(method),
                        "{method} {path} is documented but not routed"
                    );
                }
            }
        }
    }

    #[test]
    fn documented_error_codes_are_the_ones_sent() {
        let doc = doc();
        let schemas = &doc["components"]["schemas"];
        let mut documented = BTreeSet::new();
        enum_values(&schemas["ErrorCode"], &mut documented);
        let sent: BTreeSet<String> = ErrorCode::ALL
            .iter()
            .map(|c| c.as_str().to_string())
            .collect();
        assert_eq!(documented, sent);
        assert_eq!(
            schemas["ErrorDetail"]["properties"]["code"]["$ref"],
            "#/components/schemas/ErrorCode"
        );
        // Every error status a response lists is the status of some code, and its body is
        // the Error schema.
        let statuses: BTreeSet<u16> = ErrorCode::ALL.iter().map(|c| c.status().as_u16()).collect();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for (status, resp) in op["responses"].as_object().unwrap() {
                    let status: u16 = status.parse().unwrap();
                    if status < 400 {
                        continue;
                    }
                    assert!(statuses.contains(&status), "{method} {path}: {status}");
                    assert_eq!(
                        resp["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/Error",
                        "{method} {path}: {status}"
                    );
                }
            }
        }
    }
}
