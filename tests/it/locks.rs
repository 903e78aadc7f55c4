//! Locks: mutual exclusion and fences across a leader kill; a paused holder loses its lease
//! and its fenced write.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::http::{self, wait_for};
use tests::inproc::InprocCluster;
use tests::process::ProcCluster;

/// One grant as a client saw it.
#[derive(Debug, Clone)]
struct Grant {
    client: usize,
    fence: u64,
    /// When the client learned of the grant.
    granted_at: Instant,
    /// When it sent the release, if it released successfully.
    released_at: Option<Instant>,
}

/// What a client's fenced increments did.
#[derive(Default, Debug)]
struct Increments {
    ok: u64,
    unknown: u64,
    stale: u64,
}

async fn post(http: &reqwest::Client, url: &str, body: Value, idem: Option<&str>) -> (u16, Value) {
    http::post_json(http, url, body, idem).await
}

/// Acquires `name` through `base`, retrying with the same Idempotency-Key while the outcome is
/// unknown or the cluster is unavailable, so an attempt never leaves a grant nobody knows of.
async fn acquire(
    http: &reqwest::Client,
    base: &str,
    name: &str,
    owner: &str,
    idem: &str,
    deadline: Instant,
) -> Option<u64> {
    let url = format!("{base}/v1/locks/{name}/acquire");
    let body = json!({ "owner": owner, "ttl_ms": 5000, "wait_ms": 3000 });
    while Instant::now() < deadline {
        let (s, b) = post(http, &url, body.clone(), Some(idem)).await;
        match s {
            200 => return b["fence"].as_u64(),
            // Still held after wait_ms: a new attempt is a new acquire.
            409 => return None,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    None
}

/// Two clients on two nodes contend for one lock until `total` grants; each holder does a
/// read-modify-write of a counter with its fence. The leader is `kill -9`ed half way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_increase_and_holders_exclude_each_other_across_a_leader_kill() {
    let total: usize = 1000;
    let mut c = ProcCluster::start(3).await.unwrap();
    let http = http::client();
    let all = [0usize, 1, 2];
    let leader = c.wait_voters(3, &all).await.unwrap() as usize - 1;
    let clients: Vec<usize> = all.iter().copied().filter(|i| *i != leader).collect();
    let (s, _) = http::put(&http, &c.bases[clients[0]], "counter", "0")
        .await
        .unwrap();
    assert_eq!(s, 200);

    tracing::info!("phase: two clients race for the lock");
    let grants_done = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut tasks = Vec::new();
    for (n, &node) in clients.iter().enumerate() {
        let base = c.bases[node].clone();
        let done = grants_done.clone();
        let http = http.clone();
        tasks.push(tokio::spawn(async move {
            let mut grants = Vec::new();
            let mut inc = Increments::default();
            let mut attempt = 0;
            while done.load(Ordering::SeqCst) < total && Instant::now() < deadline {
                attempt += 1;
                let idem = format!("c{n}-a{attempt}");
                let Some(fence) =
                    acquire(&http, &base, "race", &format!("c{n}"), &idem, deadline).await
                else {
                    continue;
                };
                let mut g = Grant {
                    client: n,
                    fence,
                    granted_at: Instant::now(),
                    released_at: None,
                };
                done.fetch_add(1, Ordering::SeqCst);
                // Read-modify-write under the lock: lost updates would show two holders.
                if let Ok((200, text, _)) = http::get(&http, &base, "counter").await {
                    let next = text.parse::<u64>().unwrap() + 1;
                    let r = http
                        .put(format!("{base}/v1/kv/counter?fence=race:{fence}"))
                        .body(next.to_string())
                        .send()
                        .await;
                    match r.map(|r| r.status().as_u16()) {
                        Ok(200) => inc.ok += 1,
                        Ok(409) => inc.stale += 1,
                        _ => inc.unknown += 1,
                    }
                }
                let release_sent = Instant::now();
                let (s, _) = post(
                    &http,
                    &format!("{base}/v1/locks/race/release"),
                    json!({ "fence": fence }),
                    Some(&format!("{idem}-release")),
                )
                .await;
                if s == 200 {
                    g.released_at = Some(release_sent);
                }
                grants.push(g);
            }
            (grants, inc)
        }));
    }

    tracing::info!("phase: kill -9 the leader half way");
    wait_for("half of the grants", Duration::from_secs(120), || async {
        (grants_done.load(Ordering::SeqCst) >= total / 2).then_some(())
    })
    .await
    .unwrap();
    c.kill9(leader).unwrap();
    c.wait_leader(&clients, Some(leader as u64 + 1))
        .await
        .unwrap();
    c.restart(leader).unwrap();

    let mut grants: Vec<Grant> = Vec::new();
    let mut inc = Increments::default();
    for t in tasks {
        let (g, i) = t.await.unwrap();
        grants.extend(g);
        inc.ok += i.ok;
        inc.unknown += i.unknown;
        inc.stale += i.stale;
    }
    assert!(
        grants.len() >= total,
        "only {} grants before the deadline",
        grants.len()
    );

    tracing::info!("phase: check fences and exclusion");
    grants.sort_by_key(|g| g.granted_at);
    for w in grants.windows(2) {
        assert!(
            w[1].fence > w[0].fence,
            "fences must grow in grant order: {:?} then {:?}",
            w[0],
            w[1]
        );
        if let Some(released) = w[0].released_at {
            assert!(
                w[1].granted_at >= released,
                "grant {:?} seen before the previous holder released ({:?})",
                w[1],
                w[0]
            );
        }
    }
    let per_client: Vec<usize> = (0..2)
        .map(|n| grants.iter().filter(|g| g.client == n).count())
        .collect();
    assert!(
        per_client.iter().all(|&n| n > 0),
        "both clients got the lock: {per_client:?}"
    );
    let (s, text, _) = http::get(&http, &c.bases[clients[0]], "counter")
        .await
        .unwrap();
    assert_eq!(s, 200);
    let counter: u64 = text.parse().unwrap();
    assert!(
        counter >= inc.ok && counter <= inc.ok + inc.unknown,
        "counter {counter} vs increments {inc:?}: a lost update means two holders at once"
    );
    eprintln!(
        "lock race: {} grants ({per_client:?}), fences {}..={}, increments {inc:?}",
        grants.len(),
        grants.first().unwrap().fence,
        grants.last().unwrap().fence
    );
}

/// A holder process that stops renewing (SIGSTOP) past its TTL loses the lock to a waiter with
/// a higher fence, and its fenced write after SIGCONT is rejected with 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_loses_the_lock_and_its_fenced_write() {
    let c = InprocCluster::start(3).await.unwrap();
    let http = http::client();
    let base = c.bases[1].clone();

    tracing::info!("phase: the holder process acquires and renews");
    let mut holder = Command::new(env!("CARGO_BIN_EXE_lock-holder"))
        .args([&base, "pause-lock", "holder-1", "1000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(holder.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let old_fence: u64 = line
        .trim()
        .strip_prefix("granted ")
        .unwrap_or_else(|| panic!("holder said {line:?}"))
        .parse()
        .unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "renewed", "the holder keeps its lease");

    tracing::info!("phase: pause the holder past its TTL; another client acquires");
    let pid = holder.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let (s, b) = post(
        &http,
        &format!("{}/v1/locks/pause-lock/acquire", c.bases[2]),
        json!({ "owner": "holder-2", "ttl_ms": 30000, "wait_ms": 10000 }),
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let new_fence = b["fence"].as_u64().unwrap();
    assert!(new_fence > old_fence, "{new_fence} > {old_fence}");

    tracing::info!("phase: resume the old holder; its fenced write is rejected");
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    let mut stdin = holder.stdin.take().unwrap();
    writeln!(stdin, "write guarded from-old-holder").unwrap();
    let mut answers = Vec::new();
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        let l = line.trim().to_string();
        let is_write = l.starts_with("write ");
        answers.push(l);
        if is_write {
            break;
        }
    }
    drop(stdin);
    let _ = holder.wait();
    let write = answers.iter().find(|l| l.starts_with("write ")).unwrap();
    assert!(
        write.starts_with("write 409") && write.contains("stale_fence"),
        "{answers:?}"
    );
    for base in &c.bases {
        let (s, _, _) = http::get(&http, base, "guarded").await.unwrap();
        assert_eq!(s, 404, "the stale write left nothing on {base}");
    }
    let r = http
        .put(format!(
            "{}/v1/kv/guarded?fence=pause-lock:{new_fence}",
            c.bases[0]
        ))
        .body("from-new-holder")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the current holder's fenced write applies");
    c.shutdown().await;
}

/// Waiters on different nodes are served in arrival order, and each blocking acquire returns
/// as soon as the lock is released to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_acquires_are_served_in_arrival_order_on_any_node() {
    let c = InprocCluster::start(3).await.unwrap();
    let http = http::client();
    let (s, b) = post(
        &http,
        &format!("{}/v1/locks/q/acquire", c.bases[0]),
        json!({ "owner": "first", "ttl_ms": 60000 }),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let first_fence = b["fence"].as_u64().unwrap();

    let mut waiters = Vec::new();
    for (i, base) in c.bases.iter().enumerate() {
        let client = http.clone();
        let url = format!("{base}/v1/locks/q/acquire");
        waiters.push(tokio::spawn(async move {
            post(
                &client,
                &url,
                json!({ "owner": format!("w{i}"), "ttl_ms": 60000, "wait_ms": 20000 }),
                None,
            )
            .await
        }));
        // Arrival order: each waiter is queued before the next one is sent.
        let base = c.bases[0].clone();
        wait_for("waiter queued", Duration::from_secs(10), || async {
            let r = http.get(format!("{base}/v1/locks/q")).send().await.ok()?;
            let v: Value = r.json().await.ok()?;
            (v["waiters"].as_u64()? == i as u64 + 1).then_some(())
        })
        .await
        .unwrap();
    }
    let mut fence = first_fence;
    for (i, w) in waiters.into_iter().enumerate() {
        let (s, _) = post(
            &http,
            &format!("{}/v1/locks/q/release", c.bases[(i + 1) % 3]),
            json!({ "fence": fence }),
            None,
        )
        .await;
        assert_eq!(s, 200);
        let (s, b) = w.await.unwrap();
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["owner"], format!("w{i}"), "served in arrival order");
        let f = b["fence"].as_u64().unwrap();
        assert!(f > fence);
        fence = f;
    }

    tracing::info!("phase: a waiter whose wait ends gets 409 with the holder");
    let start = Instant::now();
    let (s, b) = post(
        &http,
        &format!("{}/v1/locks/q/acquire", c.bases[1]),
        json!({ "owner": "late", "ttl_ms": 1000, "wait_ms": 300 }),
        None,
    )
    .await;
    assert_eq!(s, 409, "{b}");
    assert_eq!(b["error"]["holder"], "w2");
    assert!(start.elapsed() >= Duration::from_millis(300));
    c.shutdown().await;
}
