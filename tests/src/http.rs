//! HTTP helpers for tests: [`api`], the typed client of a node with the tests' timeout, and
//! wait-for-state helpers. The untyped helpers at the end (`cluster`, `voters`, `put`, `get`,
//! `post_json`, `get_json`, `get_text`) read answers as JSON values, for the tests whose
//! answers have no model type.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use node::api::client::{ApiError, Client};
use node::error::ErrorCode;
use serde_json::Value;

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

/// The typed client of the node at `base`, over a client with the tests' timeout.
pub fn api(base: &str) -> Client {
    Client::with_http(base, client())
}

/// Whether `e` is an error answer with this status and code.
pub fn is_api_error(e: &ApiError, status: u16, code: ErrorCode) -> bool {
    matches!(e, ApiError::Api { status: s, code: c, .. } if *s == status && *c == code)
}

/// The typed `GET /v1/cluster` of `api`, if it answers.
pub async fn status(api: &Client) -> Option<node::api::model::ClusterStatus> {
    api.cluster_status().await.ok()
}

/// Number of voters a typed status reports.
pub fn voter_count(status: &node::api::model::ClusterStatus) -> usize {
    use node::api::model::MemberRole;
    status
        .members
        .iter()
        .filter(|m| matches!(m.role, MemberRole::Voter))
        .count()
}

/// Polls `f` every 50 ms until it returns `Some`, or fails after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `req`; answers its status and JSON body (`null` when the body is not JSON).
pub async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.expect("request sent");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// `GET /v1/cluster` of `base`, if it answers.
pub async fn cluster(http: &reqwest::Client, base: &str) -> Option<Value> {
    let resp = http.get(format!("{base}/v1/cluster")).send().await.ok()?;
    resp.json().await.ok()
}

/// Number of voters `base` reports.
pub fn voters(status: &Value) -> usize {
    status["members"]
        .as_array()
        .map(|m| m.iter().filter(|x| x["role"] == "voter").count())
        .unwrap_or(0)
}

/// PUT a key; returns (status, body).
pub async fn put(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    value: &str,
) -> Result<(u16, Value)> {
    let r = http
        .put(format!("{base}/v1/kv/{key}"))
        .body(value.to_string())
        .send()
        .await?;
    let s = r.status().as_u16();
    Ok((s, r.json().await.unwrap_or(Value::Null)))
}

/// GET a key; returns (status, body text, X-Revision).
pub async fn get(
    http: &reqwest::Client,
    base: &str,
    key: &str,
) -> Result<(u16, String, Option<u64>)> {
    let r = http.get(format!("{base}/v1/kv/{key}")).send().await?;
    let s = r.status().as_u16();
    let rev = r
        .headers()
        .get("x-revision")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    Ok((s, r.text().await?, rev))
}

/// POSTs a JSON body (with an `Idempotency-Key` when given); returns (status, JSON answer).
/// A request that got no answer has status 0.
pub async fn post_json(
    http: &reqwest::Client,
    url: &str,
    body: Value,
    idempotency_key: Option<&str>,
) -> (u16, Value) {
    let mut req = http.post(url).json(&body);
    if let Some(k) = idempotency_key {
        req = req.header("Idempotency-Key", k);
    }
    match req.send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// GETs `url` and returns its JSON answer (panics if there is none: for tests).
pub async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    http.get(url)
        .send()
        .await
        .expect("request sent")
        .json()
        .await
        .expect("JSON answer")
}

/// GETs `url` and returns its body as text (panics if there is none: for tests).
pub async fn get_text(http: &reqwest::Client, url: &str) -> String {
    http.get(url)
        .send()
        .await
        .expect("request sent")
        .text()
        .await
        .expect("text answer")
}
