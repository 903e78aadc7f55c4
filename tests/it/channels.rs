//! Channels and the WebSocket API on in-process clusters: fan-out from every node, catch-up
//! with `since`, retention, key watches, slow consumers.

use std::time::Duration;

use node::api::ws_protocol::{
    ClientMessage, Event, KvEventKind, Push, Recovered, ReplyBody, ServerMessage,
};
use node::error::ErrorCode;
use serde_json::{json, Value};
use tests::http::{self, wait_for};
use tests::inproc::InprocCluster;
use tests::ws::WsClient;

async fn publish(http: &reqwest::Client, base: &str, channel: &str, data: Value) -> u64 {
    let (s, v) = http::post_json(
        http,
        &format!("{base}/v1/channels/{}/publish", channel.replace('/', "%2F")),
        json!({ "data": data }),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["offset"].as_u64().expect("offset")
}

fn offsets(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect()
}

fn event_offsets(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.offset).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_node_3_receives_in_order_what_node_1_publishes() {
    let c = InprocCluster::start(3).await.unwrap();
    let http = http::client();

    tracing::info!("phase: subscribe on node 3");
    let mut sub = WsClient::connect(&c.bases[2], "").await.unwrap();
    let latest = sub.subscribe("orders", None).await.unwrap();
    assert_eq!(latest, 0);

    tracing::info!("phase: publish through node 1 over HTTP, WebSocket and a transaction");
    for i in 1..=30u64 {
        assert_eq!(
            publish(&http, &c.bases[0], "orders", json!({ "n": i })).await,
            i
        );
    }
    let mut pubc = WsClient::connect(&c.bases[0], "").await.unwrap();
    let r = pubc
        .request(ClientMessage::Publish {
            channel: "orders".into(),
            data: json!({"n": 31}),
        })
        .await
        .unwrap();
    assert_eq!(r, Ok(ReplyBody::Published { offset: 31 }));
    let (s, v) = http::post_json(
        &http,
        &format!("{}/v1/txn", c.bases[0]),
        json!({"success": [{"publish": {"channel": "orders", "data": {"n": 32}}},
                           {"put": {"key": "last-order", "text": "32"}}]}),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["results"][0]["offset"], 32, "{v}");

    tracing::info!("phase: node 3 delivers all 32, in order, with their data");
    let mut others = Vec::new();
    let events = sub.events(32, &mut others).await.unwrap();
    assert_eq!(event_offsets(&events), (1..=32).collect::<Vec<_>>());
    for e in &events {
        assert_eq!(e.channel, "orders");
        assert_eq!(e.data_value()["n"], e.offset);
    }
    assert!(others.is_empty(), "unexpected messages: {others:?}");

    tracing::info!("phase: history over HTTP on node 2 agrees");
    let h = http::get_json(
        &http,
        &format!("{}/v1/channels/orders/history?since=30&limit=5", c.bases[1]),
    )
    .await;
    assert_eq!(h["earliest_offset"], 1, "{h}");
    assert_eq!(h["latest_offset"], 32, "{h}");
    assert_eq!(offsets(h["events"].as_array().unwrap()), [31, 32]);
    assert_eq!(h["events"][1]["data"], json!({"n": 32}));
    let r = http
        .get(format!("{}/v1/channels/nothing/history", c.bases[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_with_since_delivers_exactly_the_missed_events_then_live() {
    let c = InprocCluster::start_with(3, |cfg| {
        cfg.channels.retention = "short/=10:600000".parse().unwrap();
    })
    .await
    .unwrap();
    let http = http::client();

    tracing::info!("phase: receive 5 events, then disconnect");
    let mut sub = WsClient::connect(&c.bases[2], "").await.unwrap();
    sub.subscribe("feed", None).await.unwrap();
    for i in 1..=5 {
        publish(&http, &c.bases[0], "feed", json!(i)).await;
    }
    let mut others = Vec::new();
    let first = sub.events(5, &mut others).await.unwrap();
    let last = first.last().unwrap().offset;
    assert_eq!(last, 5);
    sub.close().await;

    tracing::info!("phase: 100 events published while away");
    for i in 6..=105 {
        publish(&http, &c.bases[1], "feed", json!(i)).await;
    }

    // The replay reads the node's applied history, and what it has not applied yet follows
    // live (no gap either way). A read through the barrier first makes node 2 hold all 105,
    // so that `recovered` can be checked to cover exactly the 100.
    let h = http::get_json(
        &http,
        &format!("{}/v1/channels/feed/history?since=104", c.bases[1]),
    )
    .await;
    assert_eq!(h["latest_offset"], 105, "{h}");

    tracing::info!("phase: reconnect to another node with since: exactly the 100, then live");
    let mut sub = WsClient::connect(&c.bases[1], "").await.unwrap();
    sub.subscribe("feed", Some(last)).await.unwrap();
    let mut others = Vec::new();
    let missed = sub.events(100, &mut others).await.unwrap();
    assert_eq!(event_offsets(&missed), (6..=105).collect::<Vec<_>>());
    // Live events published now follow with no gap and no duplicate.
    for i in 106..=110 {
        publish(&http, &c.bases[0], "feed", json!(i)).await;
    }
    let live = sub.events(5, &mut others).await.unwrap();
    assert_eq!(event_offsets(&live), (106..=110).collect::<Vec<_>>());
    let recovered: Vec<&Recovered> = others
        .iter()
        .filter_map(|m| match m {
            Push::Recovered(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(recovered.len(), 1, "{others:?}");
    assert_eq!(
        (recovered[0].from, recovered[0].to, recovered[0].complete),
        (6, 105, true)
    );
    // Nothing else arrives: no duplicate.
    publish(&http, &c.bases[0], "feed", json!("marker")).await;
    let next = sub.next_msg(Duration::from_secs(10)).await.unwrap();
    assert!(
        matches!(&next, Push::Event(e) if e.offset == 111),
        "{next:?}"
    );

    tracing::info!("phase: since older than retention reports complete:false");
    for i in 1..=30 {
        publish(&http, &c.bases[0], "short/x", json!(i)).await;
    }
    let h = http::get_json(
        &http,
        &format!("{}/v1/channels/short%2Fx/history", c.bases[2]),
    )
    .await;
    assert_eq!(
        (h["earliest_offset"].as_u64(), h["latest_offset"].as_u64()),
        (Some(21), Some(30)),
        "{h}"
    );
    let mut old = WsClient::connect(&c.bases[2], "").await.unwrap();
    old.subscribe("short/x", Some(3)).await.unwrap();
    let mut others = Vec::new();
    let kept = old.events(10, &mut others).await.unwrap();
    assert_eq!(event_offsets(&kept), (21..=30).collect::<Vec<_>>());
    let rec = old.next_msg(Duration::from_secs(10)).await.unwrap();
    let Push::Recovered(rec) = rec else {
        panic!("not recovered: {rec:?}")
    };
    assert_eq!((rec.from, rec.to), (4, 30));
    assert!(!rec.complete);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_watch_delivers_every_later_change_under_its_prefix_in_revision_order() {
    let c = InprocCluster::start(3).await.unwrap();
    let http = http::client();
    let (_, v) = http::put(&http, &c.bases[0], "app%2Fbefore", "0")
        .await
        .unwrap();
    let start = v["revision"].as_u64().unwrap();
    let mut expected = Vec::new();
    tracing::info!("phase: changes before the watch starts, after revision {start}");
    for i in 0..3 {
        let (_, v) = http::put(&http, &c.bases[0], &format!("app%2Fearly{i}"), "e")
            .await
            .unwrap();
        expected.push((
            KvEventKind::Put,
            format!("app/early{i}"),
            v["revision"].as_u64().unwrap(),
        ));
        http::put(&http, &c.bases[0], "elsewhere", "x")
            .await
            .unwrap();
    }

    tracing::info!("phase: watch app/ on node 2 from revision {start}");
    let mut w = WsClient::connect(&c.bases[1], "").await.unwrap();
    let r = w.request(watch("app/", start)).await.unwrap();
    assert!(r.is_ok(), "{r:?}");

    tracing::info!("phase: puts, deletes, a transaction and other prefixes through node 1");
    for i in 0..10 {
        let (_, v) = http::put(&http, &c.bases[0], &format!("app%2Fk{i}"), &format!("v{i}"))
            .await
            .unwrap();
        expected.push((
            KvEventKind::Put,
            format!("app/k{i}"),
            v["revision"].as_u64().unwrap(),
        ));
        http::put(&http, &c.bases[0], &format!("other%2Fk{i}"), "x")
            .await
            .unwrap();
    }
    let del = http
        .delete(format!("{}/v1/kv/app%2Fk3", c.bases[0]))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    expected.push((
        KvEventKind::Delete,
        "app/k3".into(),
        del["revision"].as_u64().unwrap(),
    ));
    let (_, t) = http::post_json(
        &http,
        &format!("{}/v1/txn", c.bases[0]),
        json!({"success": [{"put": {"key": "app/t1", "text": "a"}}, {"delete": {"key": "app/k4"}},
                           {"put": {"key": "zzz", "text": "b"}}]}),
        None,
    )
    .await;
    let rev = t["revision"].as_u64().unwrap();
    expected.push((KvEventKind::Put, "app/t1".into(), rev));
    expected.push((KvEventKind::Delete, "app/k4".into(), rev));

    let mut got = Vec::new();
    while got.len() < expected.len() {
        let m = w.next_msg(Duration::from_secs(10)).await.unwrap();
        let Push::Kv(m) = m else {
            panic!("not a key change: {m:?}")
        };
        assert_eq!(m.prefix, "app/");
        if m.event == KvEventKind::Put && m.key == "app/k0" {
            assert_eq!(m.value.as_deref(), Some("djA="), "base64 of v0");
        }
        got.push((m.event, m.key, m.revision));
    }
    assert_eq!(got, expected);
    assert!(got.iter().all(|(_, _, r)| *r > start));
    assert!(got.windows(2).all(|p| p[0].2 <= p[1].2), "revision order");

    tracing::info!("phase: a watch from a compacted revision is refused with compact_revision");
    let (s, v) = http::post_json(
        &http,
        &format!("{}/v1/cluster/compact", c.bases[0]),
        json!({ "revision": start + 5 }),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    wait_for(
        "node 2 to apply the compaction",
        Duration::from_secs(10),
        || async {
            let s = http::cluster(&http, &c.bases[1]).await?;
            (s["compact_revision"].as_u64()? >= start + 5).then_some(())
        },
    )
    .await
    .unwrap();
    let e = w.request(watch("x/", start)).await.unwrap().unwrap_err();
    assert_eq!(e.code, ErrorCode::Compacted, "{e:?}");
    assert_eq!(e.compact_revision, Some(start + 5), "{e:?}");
    let r = w.request(watch("x/", start + 5)).await.unwrap();
    assert!(
        r.is_ok(),
        "watching from the compact revision itself works: {r:?}"
    );
    c.shutdown().await;
}

fn watch(prefix: &str, since_revision: u64) -> ClientMessage {
    ClientMessage::Watch {
        prefix: prefix.into(),
        since_revision: Some(since_revision),
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_disconnected_with_its_reason_and_memory_stays_bounded() {
    const BUFFER: usize = 256 << 10;
    let c = InprocCluster::start_with(1, |cfg| {
        cfg.limits.max_value_bytes = 64 << 10;
        cfg.ws.send_buffer_bytes = BUFFER;
    })
    .await
    .unwrap();
    let http = http::client();
    let base = c.bases[0].clone();

    tracing::info!("phase: a slow client stops reading, a fast one keeps up");
    let mut slow = WsClient::connect(&base, "").await.unwrap();
    slow.subscribe("big", None).await.unwrap();
    let mut fast = WsClient::connect(&base, "").await.unwrap();
    fast.subscribe("big", None).await.unwrap();
    const N: usize = 500;
    let fast_reader = tokio::spawn(async move {
        let mut others = Vec::new();
        let ev = fast.events(N, &mut others).await.unwrap();
        event_offsets(&ev)
    });

    tracing::info!("phase: publish {N} events of 30 KiB; the queue never passes its bound");
    let blob = "x".repeat(30 << 10);
    let mut max_buffered = 0.0f64;
    let mut disconnected_at = None;
    for i in 0..N {
        publish(&http, &base, "big", json!({ "i": i, "blob": blob })).await;
        if i % 10 == 0 {
            let m = http::get_text(&http, &format!("{base}/metrics")).await;
            max_buffered = max_buffered.max(metric(&m, "stackd_ws_send_buffer_bytes"));
            if disconnected_at.is_none()
                && metric(&m, "stackd_ws_disconnects_total{reason=\"slow_consumer\"}") >= 1.0
            {
                disconnected_at = Some(i);
            }
        }
    }
    assert_eq!(
        fast_reader.await.unwrap(),
        (1..=N as u64).collect::<Vec<_>>()
    );
    let m = http::get_text(&http, &format!("{base}/metrics")).await;
    assert_eq!(
        metric(&m, "stackd_ws_disconnects_total{reason=\"slow_consumer\"}"),
        1.0,
        "the slow client is disconnected, the fast one is not"
    );
    tracing::info!(?disconnected_at, max_buffered, "slow consumer disconnected");
    // Two connections, each bounded by BUFFER plus one event and the final error.
    assert!(
        max_buffered <= (2 * (BUFFER + (64 << 10))) as f64,
        "queued {max_buffered} bytes"
    );

    tracing::info!("phase: the slow client reads what was sent, then the reason");
    let mut last = 0;
    let mut reason = None;
    for _ in 0..N + 10 {
        match slow.next(Duration::from_secs(15)).await.unwrap() {
            Ok(Push::Event(e)) => {
                assert_eq!(e.offset, last + 1, "in order, no gap");
                last = e.offset;
            }
            Ok(m) => {
                let Push::Error(n) = &m else {
                    panic!("neither an event nor an error: {m:?}")
                };
                assert_eq!(n.error.code, ErrorCode::SlowConsumer, "{m:?}");
                assert_eq!(n.error.limit_bytes, Some(BUFFER as u64), "{m:?}");
            }
            Err(closed) => {
                reason = Some(closed);
                break;
            }
        }
    }
    let closed = reason.expect("the connection closes");
    assert_eq!(
        closed.code,
        Some(tests::ws::SLOW_CONSUMER_CLOSE),
        "{closed:?}"
    );
    assert!(closed.reason.contains("slow consumer"), "{closed:?}");
    assert!(
        (last as usize) < N,
        "it was cut off before the end ({last})"
    );

    tracing::info!("phase: it resumes from its last offset and gets the rest");
    let mut again = WsClient::connect(&base, "").await.unwrap();
    again.subscribe("big", Some(last)).await.unwrap();
    let mut others = Vec::new();
    let rest = again.events(N - last as usize, &mut others).await.unwrap();
    assert_eq!(
        event_offsets(&rest),
        (last + 1..=N as u64).collect::<Vec<_>>()
    );
    wait_for(
        "connection gauge to settle",
        Duration::from_secs(10),
        || async {
            let m = http
                .get(format!("{base}/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            (metric(&m, "stackd_ws_connections") == 1.0).then_some(())
        },
    )
    .await
    .unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_that_is_not_a_valid_request_is_refused_with_bad_request_and_its_id() {
    let c = InprocCluster::start(1).await.unwrap();
    let mut ws = WsClient::connect(&c.bases[0], "").await.unwrap();
    let cases = [
        (json!({"id": 41, "op": "nope"}), json!(41), "unknown op"),
        (
            json!({"id": "s", "op": "subscribe"}),
            json!("s"),
            "subscribe without a channel",
        ),
        (
            json!({"id": 43, "op": "publish", "channel": "c"}),
            json!(43),
            "publish without data",
        ),
        (
            json!({"id": 44, "op": "publish", "channel": "c", "data": null}),
            json!(44),
            "publish with null data",
        ),
        (
            json!({"id": 45, "op": "subscribe", "channel": "c", "offset": 1}),
            json!(45),
            "a field subscribe does not take",
        ),
        (
            json!({"op": "ping", "id": 46, "x": 1}),
            json!(46),
            "ping with a field",
        ),
        (json!({"id": 47}), json!(47), "no op"),
    ];
    for (frame, id, what) in cases {
        let answer = ws.send_text(&frame.to_string(), &id).await.unwrap();
        let ServerMessage::Refusal(r) = answer else {
            panic!("{what}: not refused: {answer:?}")
        };
        assert_eq!(r.error.code, ErrorCode::BadRequest, "{what}: {r:?}");
        assert_eq!(r.id, id, "{what}");
    }
    tracing::info!("phase: a frame that is not JSON is refused with a null id");
    let answer = ws.send_text("{\"id\": 48, op", &Value::Null).await.unwrap();
    assert!(
        matches!(&answer, ServerMessage::Refusal(r) if r.error.code == ErrorCode::BadRequest),
        "{answer:?}"
    );
    tracing::info!("phase: the connection still serves requests");
    let r = ws.request(ClientMessage::Ping {}).await.unwrap();
    assert_eq!(r, Ok(ReplyBody::Pong { pong: true }));
    c.shutdown().await;
}

/// Offsets and revisions at the top of the u64 range (`since`, `since_revision`) are answered
/// like any other: over HTTP and over the WebSocket, and the connection keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_offsets_and_revisions_get_answers() {
    let c = InprocCluster::start(1).await.unwrap();
    let http = http::client();
    let b = &c.bases[0];
    publish(&http, b, "top", json!(1)).await;
    publish(&http, b, "top", json!(2)).await;

    for since in [u64::MAX, u64::MAX - 1, 3] {
        let v = http::get_json(&http, &format!("{b}/v1/channels/top/history?since={since}")).await;
        assert_eq!(v["events"], json!([]), "since {since}: {v}");
        assert_eq!(
            (v["earliest_offset"].as_u64(), v["latest_offset"].as_u64()),
            (Some(1), Some(2))
        );
    }
    let v = http::get_json(
        &http,
        &format!("{b}/v1/history?since_revision={}", u64::MAX),
    )
    .await;
    assert_eq!(v["events"], json!([]), "{v}");

    let mut ws = WsClient::connect(b, "").await.unwrap();
    assert_eq!(ws.subscribe("top", Some(u64::MAX)).await.unwrap(), 2);
    let Push::Recovered(r) = ws.next_msg(Duration::from_secs(10)).await.unwrap() else {
        panic!("a recovered notice");
    };
    assert!(r.complete && r.to == u64::MAX, "{r:?}");
    assert_eq!(ws.subscribe("never", Some(u64::MAX)).await.unwrap(), 0);
    let r = ws.request(watch("", u64::MAX)).await.unwrap();
    assert!(r.is_ok(), "{r:?}");
    publish(&http, b, "top", json!(3)).await;
    http.put(format!("{b}/v1/kv/top"))
        .body("x")
        .send()
        .await
        .unwrap();
    let pong = ws.request(ClientMessage::Ping {}).await.unwrap();
    assert!(matches!(pong, Ok(ReplyBody::Pong { .. })), "{pong:?}");
    c.shutdown().await;
}
