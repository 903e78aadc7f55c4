//! The listings the admin UI pages read: locks and semaphores by prefix (holders, fences,
//! waiters, expiry), channels, a queue's jobs by state, dead letters deleted (one, a
//! selection, all) on every replica, and a key's time to live.

use std::time::Duration;

use node::api::client::{Client, KvWrite};
use node::api::model::{AcquireRequest, DeleteDeadRequest, EnqueueRequest, NackRequest};
use node::api::semaphores::AcquireBody;
use reqwest::Method;
use serde_json::{json, Value};
use tests::http::{self, wait_for};
use tests::inproc::InprocCluster;

fn lock(owner: &str, ttl_ms: u64, wait_ms: u64) -> AcquireRequest {
    AcquireRequest {
        owner: owner.to_string(),
        ttl_ms,
        wait_ms,
    }
}

async fn enqueue(api: &Client, queue: &str, body: Value) -> String {
    let req: EnqueueRequest = serde_json::from_value(body).expect("an enqueue body");
    api.enqueue(queue, &req).await.unwrap().id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_semaphores_channels_jobs_and_ttls_are_listed() {
    let c = InprocCluster::start(3).await.unwrap();
    let apis: Vec<Client> = c.bases.iter().map(|b| http::api(b)).collect();
    let (a, b) = (&apis[0], &apis[1]);

    tracing::info!("phase: locks by prefix, with holder, fence, expiry and waiters");
    let g1 = a
        .lock_acquire("jobs/billing", &lock("w1", 60_000, 0))
        .await
        .unwrap();
    let g2 = a
        .lock_acquire("jobs/reindex", &lock("w2", 60_000, 0))
        .await
        .unwrap();
    a.lock_acquire("other", &lock("w3", 60_000, 0))
        .await
        .unwrap();
    // A caller queues behind w1.
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            b.lock_acquire("jobs/billing", &lock("w4", 5000, 20_000))
                .await
        })
    };
    let listed = wait_for(
        "the waiter to be listed",
        Duration::from_secs(10),
        || async {
            let l = a.locks("jobs/", None, None).await.ok()?;
            (l.locks.first()?.waiters == 1).then_some(l)
        },
    )
    .await
    .unwrap();
    let names: Vec<&str> = listed.locks.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["jobs/billing", "jobs/reindex"]);
    assert_eq!(listed.next, None);
    let billing = &listed.locks[0];
    assert_eq!(billing.holder.as_deref(), Some("w1"));
    assert_eq!(billing.fence, Some(g1.fence));
    assert_eq!(billing.ttl_ms, Some(60_000));
    assert!(billing.expires_in_ms.unwrap() <= 60_000);
    assert_eq!(billing.next_waiters[0].owner, "w4");
    assert!(billing.next_waiters[0].gives_up_in_ms <= 20_000);
    assert_eq!(listed.locks[1].fence, Some(g2.fence));
    // Pages: one lock at a time, then the rest after it.
    let p1 = b.locks("jobs/", None, Some(1)).await.unwrap();
    assert_eq!(p1.locks.len(), 1);
    assert_eq!(p1.next.as_deref(), Some("jobs/billing"));
    let p2 = b.locks("jobs/", p1.next.as_deref(), Some(1)).await.unwrap();
    assert_eq!(p2.locks[0].name, "jobs/reindex");
    assert_eq!(a.locks("", None, None).await.unwrap().locks.len(), 3);
    // Released: the waiter is granted in the same step and the listing shows it.
    a.lock_release("jobs/billing", g1.fence).await.unwrap();
    let granted = waiter.await.unwrap().unwrap();
    let l = a.locks("jobs/b", None, None).await.unwrap();
    assert_eq!(l.locks[0].holder.as_deref(), Some("w4"));
    assert_eq!(l.locks[0].fence, Some(granted.fence));
    assert_eq!(l.locks[0].waiters, 0);
    let bad = a.raw(Method::GET, "/v1/locks?limit=0", None).await.unwrap();
    assert_eq!(bad.status, 400, "{}", bad.json());

    tracing::info!("phase: semaphores by prefix, with their leases");
    let body = |holder: &str, permits: u32| AcquireBody {
        holder: holder.to_string(),
        permits,
        capacity: 5,
        ttl_ms: 60_000,
        wait_ms: 0,
    };
    let s1 = a
        .semaphore_acquire("exports", &body("e1", 2))
        .await
        .unwrap();
    a.semaphore_acquire("exports", &body("e2", 1))
        .await
        .unwrap();
    a.semaphore_acquire("imports", &body("i1", 1))
        .await
        .unwrap();
    let s = b.semaphores("exp", None, None).await.unwrap();
    assert_eq!(s.semaphores.len(), 1);
    let e = &s.semaphores[0];
    assert_eq!(
        (e.name.as_str(), e.capacity, e.held, e.free),
        ("exports", 5, 3, 2)
    );
    assert_eq!(e.holders[0].holder, "e1");
    assert_eq!(e.holders[0].fence, s1.fence);
    assert_eq!(
        b.semaphores("", None, None).await.unwrap().semaphores.len(),
        2
    );

    tracing::info!("phase: channels with their offsets");
    for i in 0..3 {
        a.publish("orders/eu", json!({ "n": i })).await.unwrap();
    }
    a.publish("orders/us", json!({ "n": 9 })).await.unwrap();
    a.publish("metrics", json!(1)).await.unwrap();
    let ch = b.channels("orders/", None, None).await.unwrap();
    let got: Vec<(&str, u64, u64)> = ch
        .channels
        .iter()
        .map(|c| (c.name.as_str(), c.latest_offset, c.retained))
        .collect();
    assert_eq!(got, [("orders/eu", 3, 3), ("orders/us", 1, 1)]);
    assert_eq!(ch.channels[0].earliest_offset, 1);
    assert!(ch.channels[0].last_published_ms.is_some());
    assert_eq!(ch.channels[0].present, 0);
    // Without access control the reserved $audit channel is listed too.
    let every: Vec<String> = b
        .channels("", None, None)
        .await
        .unwrap()
        .channels
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(every, ["$audit", "metrics", "orders/eu", "orders/us"]);
    let page = b.channels("", Some("$audit"), Some(1)).await.unwrap();
    assert_eq!(page.channels[0].name, "metrics");
    assert_eq!(page.next.as_deref(), Some("metrics"));
    let rest = b.channels("", page.next.as_deref(), None).await.unwrap();
    assert_eq!(rest.channels[0].name, "orders/eu");
    assert_eq!(rest.next, None);

    tracing::info!("phase: a queue's jobs by state");
    let ready = enqueue(a, "mail", json!({ "payload": "now", "priority": 1 })).await;
    let ready2 = enqueue(a, "mail", json!({ "payload": "now, low" })).await;
    let delayed = enqueue(
        a,
        "mail",
        json!({ "payload": "later", "delay_ms": 600_000 }),
    )
    .await;
    for i in 0..3 {
        enqueue(
            a,
            "mail",
            json!({ "payload": format!("doomed {i}"), "max_attempts": 1, "priority": 10 }),
        )
        .await;
    }
    // Claims the three doomed jobs (highest priority), fails them: dead.
    let claim = node::api::model::ClaimRequest {
        worker: "w".into(),
        max: 3,
        visibility_ms: Some(30_000),
        wait_ms: 0,
        moved: false,
    };
    let claimed = b.claim("mail", &claim).await.unwrap().jobs;
    assert_eq!(claimed.len(), 3);
    let dead_ids: Vec<String> = claimed.iter().map(|j| j.id.clone()).collect();
    for j in &claimed {
        let nack = NackRequest {
            lease: j.lease,
            error: Some("boom".into()),
            retry_in_ms: None,
        };
        b.nack(&j.id, &nack).await.unwrap();
    }
    let inflight = enqueue(a, "mail", json!({ "payload": "busy", "priority": 5 })).await;
    let claim1 = node::api::model::ClaimRequest { max: 1, ..claim };
    assert_eq!(b.claim("mail", &claim1).await.unwrap().jobs[0].id, inflight);
    let ids = |l: node::api::model::JobList| l.jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
    assert_eq!(
        ids(b.jobs("mail", Some("ready"), None).await.unwrap()),
        [ready.clone(), ready2]
    );
    assert_eq!(
        ids(b.jobs("mail", Some("delayed"), None).await.unwrap()),
        [delayed]
    );
    assert_eq!(
        ids(b.jobs("mail", Some("in_flight"), None).await.unwrap()),
        [inflight]
    );
    assert_eq!(
        ids(b.jobs("mail", Some("dead"), None).await.unwrap()),
        dead_ids
    );
    let all = b.jobs("mail", None, None).await.unwrap();
    assert_eq!(all.jobs.len(), 7);
    assert_eq!(all.jobs[0].id, ready);
    assert_eq!(b.jobs("mail", None, Some(2)).await.unwrap().jobs.len(), 2);
    let bad = b
        .raw(Method::GET, "/v1/queues/mail/jobs?state=done", None)
        .await
        .unwrap();
    assert_eq!(bad.status, 400, "{}", bad.json());

    tracing::info!("phase: dead letters deleted: one, a selection with a stranger, all");
    let one = DeleteDeadRequest {
        ids: Some(vec![dead_ids[0].clone()]),
        all: false,
    };
    assert_eq!(a.delete_dead("mail", &one).await.unwrap().deleted, 1);
    // A ready job's id is not a dead job's: left alone.
    let sel = DeleteDeadRequest {
        ids: Some(vec![
            dead_ids[0].clone(),
            dead_ids[1].clone(),
            ready.clone(),
        ]),
        all: false,
    };
    assert_eq!(a.delete_dead("mail", &sel).await.unwrap().deleted, 1);
    assert!(a.job(&ready).await.is_ok());
    let all = DeleteDeadRequest {
        ids: None,
        all: true,
    };
    assert_eq!(a.delete_dead("mail", &all).await.unwrap().deleted, 1);
    for api in &apis {
        let s = api.stale().queue_stats("mail").await.unwrap();
        if s.dead != 0 {
            wait_for(
                "every replica to drop the dead jobs",
                Duration::from_secs(5),
                || async { (api.stale().queue_stats("mail").await.ok()?.dead == 0).then_some(()) },
            )
            .await
            .unwrap();
        }
    }
    assert!(b.job(&dead_ids[2]).await.is_err());
    let neither = b
        .raw_json(Method::POST, "/v1/queues/mail/dead/delete", &json!({}))
        .await
        .unwrap();
    assert_eq!(neither.status, 400, "{}", neither.json());

    tracing::info!("phase: a key's time to live is in its read answer");
    let ttl = KvWrite {
        ttl_ms: Some(60_000),
        ..KvWrite::default()
    };
    a.kv_put_with("session-lock", "x", &ttl).await.unwrap();
    a.kv_put("forever", "y").await.unwrap();
    let v = b.kv_get("session-lock").await.unwrap();
    let left = v.expires_in_ms.expect("a TTL key answers X-Expires-In-Ms");
    assert!(left > 50_000 && left <= 60_000, "{left} ms left");
    assert_eq!(b.kv_get("forever").await.unwrap().expires_in_ms, None);
    c.shutdown().await;
}
