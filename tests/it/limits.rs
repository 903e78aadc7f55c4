//! Count limits: each refusal is 429 rate_limited naming its setting (`setting`, `limit`), is
//! decided alike whichever node the write reaches, and leaves the node healthy; freeing one
//! makes room again.

use std::time::Duration;

use node::api::client::{ApiError, Client};
use node::api::model::{CreateSessionRequest, EnqueueRequest, ScheduleRequest};
use node::error::ErrorCode;
use serde_json::json;
use tests::http::{self, wait_for};
use tests::inproc::InprocCluster;

const WAIT: Duration = Duration::from_secs(30);

/// Asserts `e` is the refusal of `limit` with `max`.
fn refused(e: ApiError, limit: &str, max: u64) {
    assert!(http::is_api_error(&e, 429, ErrorCode::RateLimited), "{e:?}");
    let ApiError::Api {
        detail, message, ..
    } = &e
    else {
        unreachable!()
    };
    assert_eq!(detail.more.get("setting"), Some(&json!(limit)), "{e:?}");
    assert_eq!(detail.limit, Some(max), "{e:?}");
    assert!(message.contains(limit), "{message}");
}

fn job() -> EnqueueRequest {
    serde_json::from_value(json!({"payload": {}})).unwrap()
}

/// Waits until `api`'s node has the cluster's limits in force: the leader puts them in force
/// in one entry, the quota among them.
async fn limits_in_force(api: &Client) {
    wait_for("the limits in force", WAIT, || async {
        let s = api.cluster_status().await.ok()?;
        (s.storage.quota_bytes == 2 << 30).then_some(())
    })
    .await
    .unwrap();
}

/// One node configured by `tune`, once its limits are in force, and its API.
async fn one_node(tune: impl Fn(&mut node::config::Config)) -> (InprocCluster, Client) {
    let c = InprocCluster::start_with(1, tune).await.unwrap();
    let api = http::api(&c.bases[0]);
    limits_in_force(&api).await;
    (c, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_count_limit_refuses_one_more_and_names_itself() {
    let c = InprocCluster::start_with(3, |c| {
        let l = &mut c.limits;
        (l.max_keys, l.max_queues, l.max_jobs_per_queue) = (3, 2, 2);
        (l.max_schedules, l.max_channels, l.max_sessions_per_user) = (1, 2, 2);
    })
    .await
    .unwrap();
    let apis: Vec<Client> = c.bases.iter().map(|b| http::api(b)).collect();
    for api in &apis {
        limits_in_force(api).await;
    }
    for (i, api) in apis.iter().enumerate() {
        api.kv_put(&format!("k{i}"), "v").await.unwrap();
    }
    refused(
        apis[0].kv_put("k3", "v").await.unwrap_err(),
        "limits.max_keys",
        3,
    );

    tracing::info!("phase: keys: an overwrite passes, one more key does not, on any node");
    apis[1].kv_put("k0", "again").await.unwrap();
    refused(
        apis[2].kv_put("k9", "v").await.unwrap_err(),
        "limits.max_keys",
        3,
    );
    apis[1].kv_delete("k1").await.unwrap();
    apis[2].kv_put("k9", "v").await.unwrap();

    tracing::info!("phase: queues and jobs per queue");
    apis[0].enqueue("q1", &job()).await.unwrap();
    apis[1].enqueue("q1", &job()).await.unwrap();
    refused(
        apis[2].enqueue("q1", &job()).await.unwrap_err(),
        "limits.max_jobs_per_queue",
        2,
    );
    apis[0].enqueue("q2", &job()).await.unwrap();
    refused(
        apis[1].enqueue("q3", &job()).await.unwrap_err(),
        "limits.max_queues",
        2,
    );

    tracing::info!("phase: schedules");
    let every_day: ScheduleRequest =
        serde_json::from_value(json!({"cron": "0 0 * * *", "payload": {}})).unwrap();
    apis[0].schedule_set("q1", "a", &every_day).await.unwrap();
    apis[1].schedule_set("q1", "a", &every_day).await.unwrap();
    refused(
        apis[2]
            .schedule_set("q1", "b", &every_day)
            .await
            .unwrap_err(),
        "limits.max_schedules",
        1,
    );

    tracing::info!("phase: channels (the audit channel may be one of them)");
    let mut published = 0;
    let e = loop {
        match apis[published % 3]
            .publish(&format!("ch{published}"), json!(1))
            .await
        {
            Ok(_) => published += 1,
            Err(e) => break e,
        }
        assert!(published <= 2, "more than max_channels channels");
    };
    refused(e, "limits.max_channels", 2);

    tracing::info!("phase: sessions per user");
    let session = |user: &str| CreateSessionRequest {
        user: user.into(),
        data: None,
        ttl_ms: None,
    };
    apis[0].session_create(&session("ann")).await.unwrap();
    apis[1].session_create(&session("ann")).await.unwrap();
    refused(
        apis[2].session_create(&session("ann")).await.unwrap_err(),
        "limits.max_sessions_per_user",
        2,
    );
    apis[2].session_create(&session("bob")).await.unwrap();

    for api in &apis {
        api.health().await.unwrap();
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_queue_is_deleted_and_frees_its_place() {
    let (c, api) = one_node(|c| c.limits.max_queues = 1).await;
    api.enqueue("old", &job()).await.unwrap();
    refused(
        api.enqueue("new", &job()).await.unwrap_err(),
        "limits.max_queues",
        1,
    );

    tracing::info!("phase: a queue with a job is not idle");
    let e = api.queue_delete("old").await.unwrap_err();
    assert!(http::is_api_error(&e, 409, ErrorCode::Conflict), "{e:?}");
    let e = api.queue_delete("never").await.unwrap_err();
    assert!(http::is_api_error(&e, 404, ErrorCode::NotFound), "{e:?}");

    tracing::info!("phase: once its job is acked, the CLI deletes it");
    let claim: node::api::model::ClaimRequest =
        serde_json::from_value(json!({"worker": "w", "max": 1})).unwrap();
    let got = api.claim("old", &claim).await.unwrap().jobs;
    api.ack(&got[0].id, got[0].lease).await.unwrap();
    let listed = api.queues().await.unwrap().queues;
    assert!(listed.iter().any(|q| q.queue == "old" && q.completed == 1));
    let addr = c.bases[0].trim_start_matches("http://").to_string();
    let out = tokio::process::Command::new(tests::process::stackd_bin())
        .args(["queue", "delete", "old", "--addr", &addr])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let listed = api.queues().await.unwrap().queues;
    assert!(
        listed.iter().all(|q| q.queue != "old"),
        "the queue and its count of completed jobs are gone: {listed:?}"
    );
    api.enqueue("new", &job()).await.unwrap();
    api.health().await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_channel_is_deleted_and_frees_its_place() {
    let (c, api) = one_node(|c| {
        c.limits.max_channels = 1;
        // Events on t/ age out after 3 s.
        c.channels.retention = "t/=10:3000".parse().unwrap();
    })
    .await;
    assert_eq!(api.publish("t/old", json!(1)).await.unwrap().offset, 1);
    api.publish("t/old", json!(2)).await.unwrap();
    refused(
        api.publish("t/new", json!(1)).await.unwrap_err(),
        "limits.max_channels",
        1,
    );

    tracing::info!("phase: a channel that retains events is not idle");
    let e = api.channel_delete("t/old").await.unwrap_err();
    assert!(http::is_api_error(&e, 409, ErrorCode::Conflict), "{e:?}");
    assert!(format!("{e:?}").contains("not_idle"), "{e:?}");
    let e = api.channel_delete("t/never").await.unwrap_err();
    assert!(http::is_api_error(&e, 404, ErrorCode::NotFound), "{e:?}");
    let e = api.channel_delete("$audit").await.unwrap_err();
    assert!(http::is_api_error(&e, 400, ErrorCode::BadRequest), "{e:?}");

    tracing::info!("phase: once its events aged out, the CLI deletes it");
    wait_for("the events to age out", WAIT, || async {
        let h = api.channel_history("t/old", None, None).await.ok()?;
        h.events.is_empty().then_some(())
    })
    .await
    .unwrap();
    let addr = c.bases[0].trim_start_matches("http://").to_string();
    let out = tokio::process::Command::new(tests::process::stackd_bin())
        .args(["channel", "delete", "t/old", "--addr", &addr])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let listed = api.channels("t/", None, None).await.unwrap().channels;
    assert!(listed.is_empty(), "the channel is gone: {listed:?}");
    let e = api.channel_delete("t/old").await.unwrap_err();
    assert!(http::is_api_error(&e, 404, ErrorCode::NotFound), "{e:?}");

    tracing::info!("phase: its place is free; publishing on it again starts at offset 1");
    assert_eq!(api.publish("t/old", json!(3)).await.unwrap().offset, 1);
    refused(
        api.publish("t/new", json!(1)).await.unwrap_err(),
        "limits.max_channels",
        1,
    );
    api.health().await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_tokens_and_join_tokens_are_bounded() {
    let (c, api) = one_node(|c| {
        c.limits.max_tokens = 3;
        c.limits.max_join_tokens = 2;
    })
    .await;

    tracing::info!("phase: access tokens up to the limit (the bootstrap token among them)");
    let req: node::api::acl::TokenCreate =
        serde_json::from_value(json!({"description": "t", "policies": []})).unwrap();
    let e = loop {
        match api.acl_token_create(&req).await {
            Ok(_) => assert!(api.acl_tokens().await.unwrap().tokens.len() <= 3),
            Err(e) => break e,
        }
    };
    refused(e, "limits.max_tokens", 3);
    let tokens = api.acl_tokens().await.unwrap().tokens;
    assert_eq!(tokens.len(), 3);
    let deletable = tokens.iter().find(|t| t.description == "t").unwrap();
    api.acl_token_delete(&deletable.accessor_id).await.unwrap();
    api.acl_token_create(&req).await.unwrap();

    tracing::info!("phase: join tokens");
    api.create_token(None).await.unwrap();
    let second = api.create_token(None).await.unwrap();
    refused(
        api.create_token(None).await.unwrap_err(),
        "limits.max_join_tokens",
        2,
    );
    api.revoke_token(&second.id).await.unwrap();
    api.create_token(None).await.unwrap();
    api.health().await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_queued_for_locks_are_bounded_across_locks() {
    let (c, api) = one_node(|c| c.limits.max_lock_waiters = 1).await;
    let acquire = |owner: &str, wait_ms: u64| node::api::model::AcquireRequest {
        owner: owner.into(),
        ttl_ms: 30_000,
        wait_ms,
    };
    api.lock_acquire("L1", &acquire("a", 0)).await.unwrap();
    api.lock_acquire("L2", &acquire("c", 0)).await.unwrap();

    tracing::info!("phase: one caller queues for L1");
    let waiting = tokio::spawn({
        let api = api.clone();
        async move { api.lock_acquire("L1", &acquire("b", 20_000)).await }
    });
    wait_for("b queued", WAIT, || async {
        (api.lock_get("L1").await.ok()?.waiters == 1).then_some(())
    })
    .await
    .unwrap();

    tracing::info!("phase: a second caller, on another lock, is refused; a free lock is granted");
    refused(
        api.lock_acquire("L2", &acquire("d", 20_000))
            .await
            .unwrap_err(),
        "limits.max_lock_waiters",
        1,
    );
    api.lock_acquire("L3", &acquire("e", 20_000)).await.unwrap();

    tracing::info!("phase: once L1 is released, b holds it and the queue is free again");
    let fence = api.lock_get("L1").await.unwrap().fence;
    api.lock_release("L1", fence).await.unwrap();
    waiting.await.unwrap().unwrap();
    api.health().await.unwrap();
    c.shutdown().await;
}
