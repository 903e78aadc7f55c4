//! The storage quota: a cluster filled to twice its quota refuses the writes past it with 507
//! quota_exceeded and raises NOSPACE on every node, serves reads, deletes and other work
//! meanwhile, and takes writes again once a delete brings it under.

use std::time::Duration;

use node::api::client::Client;
use node::api::model::{Alarm, EnqueueRequest};
use node::error::ErrorCode;
use serde_json::json;
use tests::http::{self, wait_for};
use tests::inproc::InprocCluster;

const QUOTA: u64 = 1 << 20;
const VALUE: usize = 64 * 1024;
const WAIT: Duration = Duration::from_secs(30);

async fn alarms_on_every_node(apis: &[Client], want: &[Alarm]) {
    for api in apis {
        wait_for("the alarms on every node", WAIT, || async {
            let s = api.cluster_status().await.ok()?;
            (s.alarms == want).then_some(())
        })
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_filled_past_its_quota_refuses_growth_and_recovers_after_a_delete() {
    let c = InprocCluster::start_with(3, |c| c.limits.quota_bytes = QUOTA)
        .await
        .unwrap();
    let apis: Vec<Client> = c.bases.iter().map(|b| http::api(b)).collect();
    for api in &apis {
        wait_for("the quota in force", WAIT, || async {
            let s = api.cluster_status().await.ok()?;
            (s.storage.quota_bytes == QUOTA).then_some(())
        })
        .await
        .unwrap();
    }

    tracing::info!("phase: write twice the quota, through every node");
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..(2 * QUOTA as usize / VALUE) {
        let key = format!("fill/{i:03}");
        let value = vec![b'a' + (i % 26) as u8; VALUE];
        match apis[i % 3].kv_put(&key, value).await {
            Ok(_) => {
                assert_eq!(refused, 0, "{key} accepted after a refusal");
                accepted.push(key);
            }
            Err(e) => {
                assert!(
                    http::is_api_error(&e, 507, ErrorCode::QuotaExceeded),
                    "{e:?}"
                );
                refused += 1;
            }
        }
    }
    let held = accepted.iter().map(|k| k.len() + VALUE).sum::<usize>() as u64;
    tracing::info!(accepted = accepted.len(), refused, held, "filled");
    assert!(
        held >= QUOTA,
        "writes were refused before the quota: {held}"
    );
    assert!(
        held < QUOTA + (VALUE + 16) as u64,
        "more than one write past the quota: {held}"
    );
    assert!(refused > 0);
    alarms_on_every_node(&apis, &[Alarm::Nospace]).await;
    let status = apis[1].cluster_status().await.unwrap();
    assert_eq!(status.storage.data_bytes, held);
    let metrics = apis[2].metrics().await.unwrap();
    assert!(
        metrics.contains("stackd_alarm{alarm=\"NOSPACE\"} 1"),
        "{metrics}"
    );

    tracing::info!("phase: the refusal names the quota; other growth is refused too");
    let e = apis[0].kv_put("one-more", "x").await.unwrap_err();
    let node::api::client::ApiError::Api { detail, .. } = &e else {
        panic!("{e:?}");
    };
    assert_eq!(detail.more.get("quota_bytes"), Some(&json!(QUOTA)), "{e:?}");
    let job: EnqueueRequest = serde_json::from_value(json!({"payload": {"n": 1}})).unwrap();
    let e = apis[1].enqueue("q", &job).await.unwrap_err();
    assert!(
        http::is_api_error(&e, 507, ErrorCode::QuotaExceeded),
        "{e:?}"
    );

    tracing::info!("phase: reads, listings and cache writes go on");
    for (i, key) in accepted.iter().enumerate() {
        let got = apis[i % 3].kv_get(key).await.unwrap();
        assert_eq!(got.value.len(), VALUE, "{key}");
    }
    let query = node::api::client::KvListQuery {
        prefix: Some("fill/".into()),
        limit: Some(1000),
        after: None,
    };
    let listed = apis[2].kv_list(&query).await.unwrap();
    assert_eq!(listed.items.len(), accepted.len());
    apis[0]
        .cache_set("c", "small", &Default::default())
        .await
        .unwrap();
    apis[0].health().await.unwrap();

    tracing::info!("phase: a delete brings the data under the quota; writes resume");
    apis[2].kv_delete(&accepted[0]).await.unwrap();
    alarms_on_every_node(&apis, &[]).await;
    apis[1].kv_put("resumed", "yes").await.unwrap();
    apis[0].enqueue("q", &job).await.unwrap();
    c.shutdown().await;
}
