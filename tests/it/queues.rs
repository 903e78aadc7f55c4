//! Job queues: ordering, delays, backoff, dead letters, lost workers, cron through a leader
//! change, and a soak with real processes and a leader kill.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::http::{self, wait_for};
use tests::inproc::InprocCluster;
use tests::process::ProcCluster;

async fn post(http: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    http::post_json(http, url, body, None).await
}

async fn enqueue(http: &reqwest::Client, base: &str, queue: &str, body: Value) -> String {
    let (s, v) = post(http, &format!("{base}/v1/queues/{queue}/jobs"), body).await;
    assert_eq!(s, 201, "{v}");
    v["id"].as_str().unwrap().to_string()
}

async fn claim(
    http: &reqwest::Client,
    base: &str,
    queue: &str,
    max: u32,
    visibility_ms: u64,
    wait_ms: u64,
) -> Vec<Value> {
    let (s, v) = post(
        http,
        &format!("{base}/v1/queues/{queue}/claim"),
        json!({ "worker": "t", "max": max, "visibility_ms": visibility_ms, "wait_ms": wait_ms }),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["jobs"].as_array().unwrap().clone()
}

async fn stats(http: &reqwest::Client, base: &str, queue: &str) -> Value {
    http::get_json(http, &format!("{base}/v1/queues/{queue}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delays_priorities_backoff_dead_letters_and_replay() {
    let c = InprocCluster::start(3).await.unwrap();
    let http = http::client();
    let (b1, b2, b3) = (&c.bases[0], &c.bases[1], &c.bases[2]);

    tracing::info!("phase: a delayed job is not claimed before it is due");
    let start = Instant::now();
    enqueue(
        &http,
        b1,
        "d",
        json!({ "payload": "late", "delay_ms": 800 }),
    )
    .await;
    assert!(claim(&http, b2, "d", 1, 5000, 0).await.is_empty());
    let jobs = claim(&http, b3, "d", 1, 5000, 5000).await;
    let waited = start.elapsed();
    assert_eq!(jobs.len(), 1);
    assert!(
        waited >= Duration::from_millis(800),
        "claimed after {waited:?}, due after 800 ms"
    );

    tracing::info!("phase: priorities order claims, then enqueue order");
    for (p, name) in [(0, "low-a"), (10, "high"), (0, "low-b"), (5, "mid")] {
        enqueue(&http, b1, "p", json!({ "payload": name, "priority": p })).await;
    }
    let order: Vec<Value> = claim(&http, b2, "p", 10, 5000, 0)
        .await
        .iter()
        .map(|j| j["payload"].clone())
        .collect();
    assert_eq!(
        order,
        [json!("high"), json!("mid"), json!("low-a"), json!("low-b")]
    );

    tracing::info!("phase: nacks back off exponentially, then the job is dead");
    let id = enqueue(
        &http,
        b1,
        "r",
        json!({ "payload": 1, "max_attempts": 3, "backoff_ms": 300 }),
    )
    .await;
    let mut claimed_at = Vec::new();
    for attempt in 1..=3u64 {
        let jobs = claim(&http, b2, "r", 1, 5000, 10_000).await;
        assert_eq!(jobs.len(), 1, "attempt {attempt}");
        assert_eq!(jobs[0]["attempt"], attempt);
        claimed_at.push(Instant::now());
        let (s, _) = post(
            &http,
            &format!("{b3}/v1/jobs/{id}/nack"),
            json!({ "lease": jobs[0]["lease"], "error": format!("failure {attempt}") }),
        )
        .await;
        assert_eq!(s, 200);
    }
    let gaps: Vec<Duration> = claimed_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps[0] >= Duration::from_millis(300) && gaps[1] >= Duration::from_millis(600),
        "backoff 300 ms then 600 ms: {gaps:?}"
    );
    let s = stats(&http, b1, "r").await;
    assert_eq!(
        (s["dead"].clone(), s["ready"].clone()),
        (json!(1), json!(0))
    );
    let dead: Value = http::get_json(&http, &format!("{b2}/v1/queues/r/dead")).await;
    assert_eq!(dead["jobs"][0]["last_error"], "failure 3");

    tracing::info!("phase: replay brings the dead job back with fresh attempts");
    let (s, v) = post(
        &http,
        &format!("{b3}/v1/queues/r/dead/replay"),
        json!({ "ids": [id] }),
    )
    .await;
    assert_eq!((s, v["replayed"].clone()), (200, json!(1)));
    let jobs = claim(&http, b1, "r", 1, 5000, 5000).await;
    assert_eq!(jobs[0]["attempt"], 1);
    let (s, _) = post(
        &http,
        &format!("{b1}/v1/jobs/{id}/ack"),
        json!({ "lease": jobs[0]["lease"] }),
    )
    .await;
    assert_eq!(s, 200);
    let s = stats(&http, b2, "r").await;
    assert_eq!(
        (s["dead"].clone(), s["completed"].clone()),
        (json!(0), json!(1))
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_workers_jobs_are_offered_again_and_its_late_ack_is_refused() {
    let c = InprocCluster::start(3).await.unwrap();
    let http = http::client();
    for n in 0..3 {
        enqueue(&http, &c.bases[0], "w", json!({ "payload": n })).await;
    }
    // Worker A claims everything on node 2, then goes silent.
    let lost = claim(&http, &c.bases[1], "w", 10, 700, 0).await;
    assert_eq!(lost.len(), 3);
    assert!(claim(&http, &c.bases[2], "w", 10, 5000, 0).await.is_empty());

    // Worker B on node 3 gets them once their visibility ends.
    let mut again = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while again.len() < 3 && Instant::now() < deadline {
        again.extend(claim(&http, &c.bases[2], "w", 10, 30_000, 3000).await);
    }
    assert_eq!(again.len(), 3);
    for j in &again {
        assert_eq!(j["attempt"], 2);
    }
    for j in &lost {
        let (s, v) = post(
            &http,
            &format!("{}/v1/jobs/{}/ack", c.bases[1], j["id"].as_str().unwrap()),
            json!({ "lease": j["lease"] }),
        )
        .await;
        assert_eq!(s, 409, "late ack of the lost worker: {v}");
        assert_eq!(v["error"]["reason"], "stale_lease");
    }
    for j in &again {
        let (s, _) = post(
            &http,
            &format!("{}/v1/jobs/{}/ack", c.bases[0], j["id"].as_str().unwrap()),
            json!({ "lease": j["lease"] }),
        )
        .await;
        assert_eq!(s, 200);
    }
    assert_eq!(stats(&http, &c.bases[1], "w").await["completed"], 3);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_fires_once_per_due_time_through_a_leader_change() {
    let mut c = InprocCluster::start(3).await.unwrap();
    let http = http::client();
    let (s, v) = {
        let r = http
            .put(format!(
                "{}/v1/queues/cron/schedules/every-second",
                c.bases[0]
            ))
            .json(&json!({ "cron": "* * * * * *", "payload": { "from": "cron" } }))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(s, 200, "{v}");
    let first_due = v["next_at_ms"].as_u64().unwrap();

    let bases = c.bases.clone();
    let jobs_after = |n: u64| {
        let http = http.clone();
        let bases = bases.clone();
        async move {
            wait_for("cron jobs", Duration::from_secs(20), || async {
                // Any node that answers will do; a stopped one does not.
                for b in &bases {
                    let Ok(r) = http.get(format!("{b}/v1/queues/cron")).send().await else {
                        continue;
                    };
                    let v: Value = r.json().await.ok()?;
                    if v["ready"].as_u64()? >= n {
                        return Some(());
                    }
                }
                None
            })
            .await
            .unwrap();
        }
    };
    jobs_after(2).await;

    tracing::info!("phase: stop the leader; the schedule goes on under the new one");
    let leader = c.leader_index().unwrap();
    c.stop(leader).await;
    let alive: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    jobs_after(6).await;
    c.restart(leader).await.unwrap();
    jobs_after(8).await;
    let r = http
        .delete(format!(
            "{}/v1/queues/cron/schedules/every-second",
            c.bases[alive[0]]
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    tracing::info!("phase: one job per due time, no gap, no duplicate");
    let mut due = Vec::new();
    loop {
        let jobs = claim(&http, &c.bases[alive[1]], "cron", 100, 60_000, 0).await;
        if jobs.is_empty() {
            break;
        }
        for j in jobs {
            let v: Value = http::get_json(
                &http,
                &format!(
                    "{}/v1/jobs/{}",
                    c.bases[alive[0]],
                    j["id"].as_str().unwrap()
                ),
            )
            .await;
            assert_eq!(v["payload"], json!({ "from": "cron" }));
            // The unique key names the due time: cron:<schedule>:<due ms>.
            let key = v["unique_key"].as_str().unwrap();
            due.push(key.rsplit(':').next().unwrap().parse::<u64>().unwrap());
        }
    }
    due.sort();
    assert!(due.len() >= 8, "{due:?}");
    assert_eq!(due[0], first_due, "the first due time fired");
    for w in due.windows(2) {
        assert_eq!(
            w[1] - w[0],
            1000,
            "every second fires exactly once (no gap, no duplicate): {due:?}"
        );
    }
    c.shutdown().await;
}

/// Soak: 3 real nodes, 4 workers spread over them, 10,000 jobs, the leader killed with
/// `kill -9` mid-run and restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_no_acknowledged_job_lost_across_a_leader_kill() {
    let total: usize = 10_000;
    let mut c = ProcCluster::start(3).await.unwrap();
    let http = http::client();
    let all = [0usize, 1, 2];
    let leader = c.wait_voters(3, &all).await.unwrap() as usize - 1;

    tracing::info!("phase: enqueue from 16 clients over all nodes, workers running");
    let enqueued = Arc::new(Mutex::new(BTreeSet::<u64>::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut producers = Vec::new();
    for p in 0..16 {
        let (http, bases, enqueued, next) = (
            http.clone(),
            c.bases.clone(),
            enqueued.clone(),
            next.clone(),
        );
        producers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= total {
                    return;
                }
                // Same Idempotency-Key on every retry: an enqueue is applied once.
                let mut node = (p + n) % 3;
                while Instant::now() < deadline {
                    let r = http
                        .post(format!("{}/v1/queues/soak/jobs", bases[node]))
                        .header("Idempotency-Key", format!("enqueue-{n}"))
                        .json(&json!({ "payload": { "n": n }, "max_attempts": 100, "backoff_ms": 100 }))
                        .send()
                        .await;
                    if let Ok(r) = r {
                        if r.status().as_u16() == 201 || r.status().as_u16() == 200 {
                            enqueued.lock().unwrap().insert(n as u64);
                            break;
                        }
                    }
                    node = (node + 1) % 3;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }

    // Each worker records what it ran and how the ack went.
    #[derive(Default)]
    struct Log {
        runs: BTreeMap<u64, u32>,
        acked: BTreeSet<u64>,
        /// Jobs whose ack was refused (lease expired) or whose outcome is unknown.
        unsure: BTreeSet<u64>,
    }
    let log = Arc::new(Mutex::new(Log::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (http, bases, log, stop) = (http.clone(), c.bases.clone(), log.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut node = w % 3;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let (s, v) = post(
                    &http,
                    &format!("{}/v1/queues/soak/claim", bases[node]),
                    json!({ "worker": format!("w{w}"), "max": 50, "visibility_ms": 5000, "wait_ms": 1000 }),
                )
                .await;
                if s != 200 {
                    node = (node + 1) % 3;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                for j in v["jobs"].as_array().unwrap() {
                    let n = j["payload"]["n"].as_u64().unwrap();
                    *log.lock().unwrap().runs.entry(n).or_default() += 1;
                    let (s, _) = post(
                        &http,
                        &format!("{}/v1/jobs/{}/ack", bases[node], j["id"].as_str().unwrap()),
                        json!({ "lease": j["lease"] }),
                    )
                    .await;
                    let mut l = log.lock().unwrap();
                    if s == 200 {
                        l.acked.insert(n);
                    } else {
                        l.unsure.insert(n);
                    }
                }
            }
        }));
    }

    tracing::info!("phase: kill -9 the leader half way, then restart it");
    wait_for("half the jobs run", Duration::from_secs(200), || async {
        (log.lock().unwrap().acked.len() >= total / 2).then_some(())
    })
    .await
    .unwrap();
    c.kill9(leader).unwrap();
    let survivors: Vec<usize> = all.iter().copied().filter(|i| *i != leader).collect();
    c.wait_leader(&survivors, Some(leader as u64 + 1))
        .await
        .unwrap();
    c.restart(leader).unwrap();

    for p in producers {
        p.await.unwrap();
    }
    let acked_enqueues = enqueued.lock().unwrap().clone();
    assert_eq!(acked_enqueues.len(), total, "every enqueue acknowledged");
    wait_for("every job completed", Duration::from_secs(200), || async {
        let r = http
            .get(format!("{}/v1/queues/soak", c.bases[survivors[0]]))
            .send()
            .await
            .ok()?;
        let s: Value = r.json().await.ok()?;
        (s["completed"].as_u64()? == total as u64).then_some(())
    })
    .await
    .unwrap();
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }

    let l = std::mem::take(&mut *log.lock().unwrap());
    let unexpected: Vec<u64> = l
        .runs
        .keys()
        .filter(|n| !acked_enqueues.contains(n))
        .copied()
        .collect();
    assert!(
        unexpected.is_empty(),
        "jobs nobody enqueued: {unexpected:?}"
    );
    let never_ran: Vec<u64> = acked_enqueues
        .iter()
        .filter(|n| !l.runs.contains_key(n))
        .copied()
        .collect();
    assert!(
        never_ran.is_empty(),
        "acknowledged enqueues lost: {never_ran:?}"
    );
    let duplicates: Vec<(u64, u32)> = l
        .runs
        .iter()
        .filter(|(_, r)| **r > 1)
        .map(|(n, r)| (*n, *r))
        .collect();
    // A job may run twice only if an earlier run's ack did not succeed.
    let unexplained: Vec<u64> = duplicates
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !l.unsure.contains(n))
        .collect();
    assert!(
        unexplained.is_empty(),
        "jobs run twice though every ack succeeded: {unexplained:?}"
    );
    let s = stats(&http, &c.bases[survivors[0]], "soak").await;
    assert_eq!(s["completed"].as_u64(), Some(total as u64), "{s}");
    assert_eq!(s["ready"].as_u64(), Some(0), "{s}");
    eprintln!(
        "queue soak: {total} jobs enqueued and completed; {} ran more than once (acks refused or unknown: {})",
        duplicates.len(),
        l.unsure.len()
    );
}
