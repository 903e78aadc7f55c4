//! `POST /v1/txn`: compare key revisions and lock fences, then apply one branch of writes
//! atomically.

use std::collections::BTreeSet;

use axum::extract::{Extension, State};
use axum::Json;
use base64::Engine;
use raft::command::{
    CacheCmd, CacheResult, ChannelResult, Compare, KvCmd, KvResult, QueueCmd, QueueResult,
    SemaphoreCmd, SemaphoreResult, Txn, TxnResult,
};
use raft::command::{Op, OpResponse};
use raft::Response;

use super::cache::{check_tags, limits, CACHE_TTL_MS_MAX};
use super::model::EnqueueRequest;
use super::{
    check_ms, validate_key, validate_name, AppState, Idempotency, IdempotencyKey, JsonBody, St,
};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, BadRequest, TooLarge, WriteFailures};

// ---- Wire types ----

/// The request and answer of `/v1/txn` (re-exported by [`super::model`]): a primitive that
/// takes part in transactions adds its compare or op here.
pub mod wire {
    use serde::{Deserialize, Serialize};
    use serde_json::Value;
    use utoipa::ToSchema;

    /// `POST /v1/txn`: if every compare holds apply `success`, else `failure`.
    #[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct TxnRequest {
        /// At most 128.
        #[serde(default)]
        pub compare: Vec<TxnCompare>,
        /// At most 128 ops; a key is written at most once per branch.
        #[serde(default)]
        pub success: Vec<TxnOp>,
        /// At most 128 ops; a key is written at most once per branch.
        #[serde(default)]
        pub failure: Vec<TxnOp>,
    }

    /// `{key, revision}` (revision 0 = the key is absent), `{lock, fence}` (the lock is held
    /// with that fence) or `{semaphore, fence}` (that lease of the semaphore is current).
    #[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct TxnCompare {
        pub key: Option<String>,
        pub revision: Option<u64>,
        pub lock: Option<String>,
        #[serde(default)]
        pub semaphore: Option<String>,
        pub fence: Option<u64>,
    }

    /// Exactly one of these keys.
    #[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
    #[serde(deny_unknown_fields, rename_all = "snake_case")]
    pub enum TxnOp {
        /// Result `{revision}`.
        Put(TxnValueOp),
        /// Result `{revision, deleted}`.
        Delete(TxnKeyOp),
        /// Result `{stored}`.
        CacheSet(TxnValueOp),
        /// Result `{count}`.
        CacheDelete(TxnKeyOp),
        /// Result `{count}`.
        CacheInvalidate(TxnTagsOp),
        /// Result `{id, existing}`.
        Enqueue(TxnEnqueueOp),
        /// Result `{offset}`.
        Publish(TxnPublishOp),
        /// Result `{released, permits}`: `released` is false when the lease had already ended.
        SemaphoreRelease(TxnSemaphoreRelease),
    }

    /// Ends the lease `fence` of `semaphore`; its permits serve the queue in the same step.
    #[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct TxnSemaphoreRelease {
        pub semaphore: String,
        pub fence: u64,
    }

    /// A write with a value: `value` (base64) or `text` (UTF-8), not both; `tags` only for
    /// `cache_set`.
    #[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct TxnValueOp {
        pub key: String,
        pub value: Option<String>,
        pub text: Option<String>,
        pub ttl_ms: Option<u64>,
        #[serde(default)]
        pub tags: Vec<String>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct TxnKeyOp {
        pub key: String,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct TxnTagsOp {
        pub tags: Vec<String>,
    }

    /// `queue` plus the fields of `POST /v1/queues/{name}/jobs`.
    #[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct TxnEnqueueOp {
        pub queue: String,
        pub payload: Value,
        pub delay_ms: Option<u64>,
        pub run_at_ms: Option<u64>,
        #[serde(default)]
        pub priority: i64,
        pub max_attempts: Option<u32>,
        pub backoff_ms: Option<u64>,
        pub unique_key: Option<String>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct TxnPublishOp {
        pub channel: String,
        pub data: Value,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
    pub struct TxnResponse {
        pub succeeded: bool,
        pub revision: u64,
        /// One per op of the branch applied, in order.
        pub results: Vec<TxnOpResult>,
    }

    /// The result of one op, by its kind.
    #[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
    #[serde(untagged)]
    pub enum TxnOpResult {
        Deleted {
            revision: u64,
            deleted: bool,
        },
        Put {
            revision: u64,
        },
        Stored {
            stored: bool,
        },
        Count {
            count: u64,
        },
        Enqueued {
            id: String,
            existing: bool,
        },
        Published {
            offset: u64,
        },
        Released {
            released: bool,
            permits: u32,
        },
        /// An answer the op does not expect (a defect).
        Error {
            error: String,
        },
    }
}

pub use wire::*;

// ---- Handler ----

/// Most compares, and most operations in each branch.
pub const TXN_OPS_MAX: usize = 128;

fn compare(c: TxnCompare) -> ApiResult<Compare> {
    match c {
        TxnCompare {
            key: Some(key),
            revision: Some(revision),
            lock: None,
            semaphore: None,
            fence: None,
        } => {
            validate_key(&key)?;
            Ok(Compare::Revision { key, revision })
        }
        TxnCompare {
            key: None,
            revision: None,
            lock: Some(lock),
            semaphore: None,
            fence: Some(fence),
        } => {
            validate_name("lock", &lock)?;
            Ok(Compare::Fence { lock, fence })
        }
        TxnCompare {
            key: None,
            revision: None,
            lock: None,
            semaphore: Some(semaphore),
            fence: Some(fence),
        } => {
            validate_name("semaphore", &semaphore)?;
            Ok(Compare::SemaphoreFence { semaphore, fence })
        }
        _ => Err(ApiError::bad_request(
            "each compare is {\"key\", \"revision\"}, {\"lock\", \"fence\"} or {\"semaphore\", \"fence\"}",
        )
        .with("field", "compare")),
    }
}

fn value_of(st: &AppState, op: &TxnValueOp) -> ApiResult<Vec<u8>> {
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
    let limit = st.cluster.config().limits.max_value_bytes;
    if value.len() > limit {
        return Err(ApiError::too_large(format!(
            "value of {:?} is over the {limit}-byte limit",
            op.key
        ))
        .with("limit", limit));
    }
    Ok(value)
}

fn op(st: &AppState, op: TxnOp, kv_keys: &mut BTreeSet<String>) -> ApiResult<Op> {
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
        TxnOp::Put(p) => {
            once(&p.key)?;
            put_op(st, p)?
        }
        TxnOp::Delete(d) => {
            once(&d.key)?;
            KvCmd::Delete {
                key: d.key,
                if_revision: None,
            }
            .into()
        }
        TxnOp::CacheSet(c) => cache_set_op(st, c)?,
        TxnOp::CacheDelete(d) => {
            validate_key(&d.key)?;
            CacheCmd::Delete { key: d.key }.into()
        }
        TxnOp::CacheInvalidate(t) => {
            check_tags(&t.tags)?;
            CacheCmd::Invalidate { tags: t.tags }.into()
        }
        TxnOp::Enqueue(e) => enqueue_op(st, e)?,
        TxnOp::Publish(p) => {
            validate_name("channel", &p.channel)?;
            super::channels::publish_command(st, p.channel, &p.data)?.into()
        }
        TxnOp::SemaphoreRelease(r) => {
            validate_name("semaphore", &r.semaphore)?;
            SemaphoreCmd::Release {
                name: r.semaphore,
                fence: r.fence,
            }
            .into()
        }
    })
}

fn put_op(st: &AppState, p: TxnValueOp) -> ApiResult<Op> {
    if !p.tags.is_empty() {
        return Err(ApiError::bad_request("tags are for cache_set, not put"));
    }
    let ttl_ms = p
        .ttl_ms
        .map(|t| check_ms("ttl_ms", t, u64::MAX))
        .transpose()?;
    Ok(KvCmd::Put {
        value: value_of(st, &p)?,
        key: p.key,
        if_revision: None,
        ttl_ms,
    }
    .into())
}

fn cache_set_op(st: &AppState, c: TxnValueOp) -> ApiResult<Op> {
    validate_key(&c.key)?;
    check_tags(&c.tags)?;
    let ttl_ms = c
        .ttl_ms
        .map(|t| check_ms("ttl_ms", t, CACHE_TTL_MS_MAX))
        .transpose()?;
    Ok(CacheCmd::Set {
        value: value_of(st, &c)?,
        key: c.key,
        ttl_ms,
        tags: c.tags,
        limits: limits(st),
    }
    .into())
}

fn enqueue_op(st: &AppState, e: TxnEnqueueOp) -> ApiResult<Op> {
    validate_name("queue", &e.queue)?;
    let job = EnqueueRequest {
        payload: e.payload,
        delay_ms: e.delay_ms,
        run_at_ms: e.run_at_ms,
        priority: e.priority,
        max_attempts: e.max_attempts,
        backoff_ms: e.backoff_ms,
        unique_key: e.unique_key,
    };
    Ok(QueueCmd::Enqueue {
        queue: e.queue,
        job: super::queues::enqueue_job(st, job)?,
    }
    .into())
}

fn branch(st: &AppState, name: &str, ops: Vec<TxnOp>) -> ApiResult<Vec<Op>> {
    if ops.len() > TXN_OPS_MAX {
        return Err(ApiError::bad_request(format!(
            "{name} has {} ops, at most {TXN_OPS_MAX}",
            ops.len()
        )));
    }
    let mut keys = BTreeSet::new();
    ops.into_iter().map(|o| op(st, o, &mut keys)).collect()
}

fn result(r: &OpResponse) -> TxnOpResult {
    match r {
        Response::Kv(KvResult::Put { revision }) => TxnOpResult::Put {
            revision: *revision,
        },
        Response::Kv(KvResult::Delete { revision, deleted }) => TxnOpResult::Deleted {
            revision: *revision,
            deleted: *deleted,
        },
        Response::Cache(CacheResult::Stored) => TxnOpResult::Stored { stored: true },
        Response::Cache(CacheResult::Removed(n)) => TxnOpResult::Count { count: *n },
        Response::Channel(ChannelResult::Published { offset }) => {
            TxnOpResult::Published { offset: *offset }
        }
        Response::Semaphore(SemaphoreResult::Released { permits }) => TxnOpResult::Released {
            released: true,
            permits: *permits,
        },
        Response::Semaphore(SemaphoreResult::StaleFence) => TxnOpResult::Released {
            released: false,
            permits: 0,
        },
        Response::Queue(QueueResult::Enqueued { id, existing }) => TxnOpResult::Enqueued {
            id: id.to_string(),
            existing: *existing,
        },
        other => TxnOpResult::Error {
            error: format!("{other:?}"),
        },
    }
}

/// Atomic transaction: if every compare holds apply success, else failure
#[utoipa::path(
    post,
    path = "/v1/txn",
    description = "Key-value changes share one revision. Each branch holds at most 128 ops and writes a key at most once.",
    params(IdempotencyKey),
    request_body = TxnRequest,
    responses(
        (status = 200, description = "which branch applied, and one result per op", body = TxnResponse),
        BadRequest, TooLarge, WriteFailures,
    )
)]
pub async fn txn(
    State(st): St,
    Extension(caller): Extension<Caller>,
    Idempotency(idem): Idempotency,
    JsonBody(body): JsonBody<TxnRequest>,
) -> ApiResult<Json<TxnResponse>> {
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
    caller.check_all(&st, crate::auth::rights_of_txn(&txn))?;
    let TxnResult {
        succeeded,
        revision,
        results,
    } = crate::service::propose(&st.cluster, txn, idem).await?;
    Ok(Json(TxnResponse {
        succeeded,
        revision,
        results: results.iter().map(result).collect(),
    }))
}
