//! `POST /v1/txn`: compare key revisions and lock fences, then apply one branch of writes
//! atomically.

use std::collections::BTreeSet;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use base64::Engine;
use raft::command::{
    CacheCmd, CacheResult, ChannelResult, Compare, KvCmd, KvResult, QueueCmd, QueueResult, Txn,
    TxnResult,
};
use raft::{Command, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::cache::{check_tags, limits, CACHE_TTL_MS_MAX};
use super::{check_ms, idempotency_key, validate_key, validate_name, AppState, JsonBody, St};
use crate::error::{ApiError, ApiResult};

/// Most compares, and most operations in each branch.
pub const TXN_OPS_MAX: usize = 128;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnBody {
    #[serde(default)]
    compare: Vec<CompareBody>,
    #[serde(default)]
    success: Vec<OpBody>,
    #[serde(default)]
    failure: Vec<OpBody>,
}

/// `{"key", "revision"}` (0 = absent) or `{"lock", "fence"}` (held with that fence).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareBody {
    key: Option<String>,
    revision: Option<u64>,
    lock: Option<String>,
    fence: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum OpBody {
    Put(ValueOp),
    Delete(KeyOp),
    CacheSet(ValueOp),
    CacheDelete(KeyOp),
    CacheInvalidate(TagsOp),
    Enqueue(EnqueueOp),
    Publish(PublishOp),
}

/// A channel publish inside a transaction: `{"publish": {"channel", "data"}}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishOp {
    channel: String,
    data: Value,
}

/// An enqueue inside a transaction: `queue` plus the fields of `POST /v1/queues/{queue}/jobs`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnqueueOp {
    queue: String,
    payload: Value,
    delay_ms: Option<u64>,
    run_at_ms: Option<u64>,
    #[serde(default)]
    priority: i64,
    max_attempts: Option<u32>,
    backoff_ms: Option<u64>,
    unique_key: Option<String>,
}

/// A write with a value: `value` (base64) or `text` (UTF-8), not both.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueOp {
    key: String,
    value: Option<String>,
    text: Option<String>,
    ttl_ms: Option<u64>,
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyOp {
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagsOp {
    tags: Vec<String>,
}

fn compare(c: CompareBody) -> ApiResult<Compare> {
    match c {
        CompareBody {
            key: Some(key),
            revision: Some(revision),
            lock: None,
            fence: None,
        } => {
            validate_key(&key)?;
            Ok(Compare::Revision { key, revision })
        }
        CompareBody {
            key: None,
            revision: None,
            lock: Some(lock),
            fence: Some(fence),
        } => {
            validate_name("lock", &lock)?;
            Ok(Compare::Fence { lock, fence })
        }
        _ => Err(ApiError::bad_request(
            "each compare is {\"key\", \"revision\"} or {\"lock\", \"fence\"}",
        )
        .with("field", "compare")),
    }
}

fn value_of(st: &AppState, op: &ValueOp) -> ApiResult<Vec<u8>> {
    let value = match (&op.value, &op.text) {
        (Some(b64), None) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| {
                ApiError::bad_request(format!("value of {:?} is not base64: {e}", op.key))
                    .with("field", "value")
            })?,
        (None, Some(text)) => text.as_bytes().to_vec(),
        _ => {
            return Err(ApiError::bad_request(format!(
                "op on {:?} needs exactly one of value (base64) or text",
                op.key
            )))
        }
    };
    let limit = st.cluster.config.limits.max_value_bytes;
    if value.len() > limit {
        return Err(ApiError::too_large(format!(
            "value of {:?} is over the {limit}-byte limit",
            op.key
        ))
        .with("limit", limit));
    }
    Ok(value)
}

fn op(st: &AppState, op: OpBody, kv_keys: &mut BTreeSet<String>) -> ApiResult<Command> {
    let mut once = |key: &str| -> ApiResult<()> {
        validate_key(key)?;
        if !kv_keys.insert(key.to_string()) {
            return Err(ApiError::bad_request(format!(
                "key {key:?} is written twice in one branch"
            )));
        }
        Ok(())
    };
    Ok(match op {
        OpBody::Put(p) => {
            once(&p.key)?;
            if !p.tags.is_empty() {
                return Err(ApiError::bad_request("tags are for cache_set, not put"));
            }
            let ttl_ms = p
                .ttl_ms
                .map(|t| check_ms("ttl_ms", t, u64::MAX))
                .transpose()?;
            KvCmd::Put {
                value: value_of(st, &p)?,
                key: p.key,
                if_revision: None,
                ttl_ms,
            }
            .into()
        }
        OpBody::Delete(d) => {
            once(&d.key)?;
            KvCmd::Delete {
                key: d.key,
                if_revision: None,
            }
            .into()
        }
        OpBody::CacheSet(c) => {
            validate_key(&c.key)?;
            check_tags(&c.tags)?;
            let ttl_ms = c
                .ttl_ms
                .map(|t| check_ms("ttl_ms", t, CACHE_TTL_MS_MAX))
                .transpose()?;
            CacheCmd::Set {
                value: value_of(st, &c)?,
                key: c.key,
                ttl_ms,
                tags: c.tags,
                limits: limits(st),
            }
            .into()
        }
        OpBody::CacheDelete(d) => {
            validate_key(&d.key)?;
            CacheCmd::Delete { key: d.key }.into()
        }
        OpBody::CacheInvalidate(t) => {
            check_tags(&t.tags)?;
            CacheCmd::Invalidate { tags: t.tags }.into()
        }
        OpBody::Enqueue(e) => {
            validate_name("queue", &e.queue)?;
            let job = super::queues::EnqueueBody {
                payload: e.payload,
                delay_ms: e.delay_ms,
                run_at_ms: e.run_at_ms,
                priority: e.priority,
                max_attempts: e.max_attempts,
                backoff_ms: e.backoff_ms,
                unique_key: e.unique_key,
            };
            QueueCmd::Enqueue {
                queue: e.queue,
                job: super::queues::enqueue_job(st, job)?,
            }
            .into()
        }
        OpBody::Publish(p) => {
            validate_name("channel", &p.channel)?;
            super::channels::publish_command(st, p.channel, &p.data)?.into()
        }
    })
}

fn branch(st: &AppState, name: &str, ops: Vec<OpBody>) -> ApiResult<Vec<Command>> {
    if ops.len() > TXN_OPS_MAX {
        return Err(ApiError::bad_request(format!(
            "{name} has {} ops, at most {TXN_OPS_MAX}",
            ops.len()
        )));
    }
    let mut keys = BTreeSet::new();
    ops.into_iter().map(|o| op(st, o, &mut keys)).collect()
}

fn result_json(r: &Response) -> Value {
    match r {
        Response::Kv(KvResult::Put { revision }) => json!({ "revision": revision }),
        Response::Kv(KvResult::Delete { revision, deleted }) => {
            json!({ "revision": revision, "deleted": deleted })
        }
        Response::Cache(CacheResult::Stored) => json!({ "stored": true }),
        Response::Cache(CacheResult::Removed(n)) => json!({ "count": n }),
        Response::Channel(ChannelResult::Published { offset }) => json!({ "offset": offset }),
        Response::Queue(QueueResult::Enqueued { id, existing }) => {
            json!({ "id": id.to_string(), "existing": existing })
        }
        other => json!({ "error": format!("{other:?}") }),
    }
}

pub async fn txn(
    State(st): St,
    headers: HeaderMap,
    JsonBody(body): JsonBody<TxnBody>,
) -> ApiResult<Json<Value>> {
    if body.compare.len() > TXN_OPS_MAX {
        return Err(ApiError::bad_request(format!(
            "at most {TXN_OPS_MAX} compares, got {}",
            body.compare.len()
        )));
    }
    let txn = Txn {
        compare: body
            .compare
            .into_iter()
            .map(compare)
            .collect::<ApiResult<_>>()?,
        success: branch(&st, "success", body.success)?,
        failure: branch(&st, "failure", body.failure)?,
    };
    let idem = idempotency_key(&headers)?;
    let TxnResult {
        succeeded,
        revision,
        results,
    } = st.cluster.write_visible(txn, idem).await?;
    Ok(Json(json!({
        "succeeded": succeeded,
        "revision": revision,
        "results": results.iter().map(result_json).collect::<Vec<_>>(),
    })))
}
