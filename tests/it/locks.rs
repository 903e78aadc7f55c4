//! Locks: mutual exclusion and fences across a leader kill; a paused holder loses its lease
//! and its fenced write.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use node::api::client::{Client, KvWrite};
use node::api::model::AcquireRequest;
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

fn acquire_request(owner: &str, ttl_ms: u64, wait_ms: u64) -> AcquireRequest {
    AcquireRequest {
        owner: owner.to_string(),
        ttl_ms,
        wait_ms,
    }
}

fn fenced(lock: &str, fence: u64) -> KvWrite {
    KvWrite {
        fence: Some(format!("{lock}:{fence}")),
        ..KvWrite::default()
    }
}

/// Acquires `name` through `api`, retrying with the same Idempotency-Key while the outcome is
/// unknown or the cluster is unavailable, so an attempt never leaves a grant nobody knows of.
async fn acquire(
    api: &Client,
    name: &str,
    owner: &str,
    idem: &str,
    deadline: Instant,
) -> Option<u64> {
    let api = api.idempotent(idem);
    let body = acquire_request(owner, 5000, 3000);
    while Instant::now() < deadline {
        match api.lock_acquire(name, &body).await {
            Ok(grant) => return Some(grant.fence),
            // Still held after wait_ms: a new attempt is a new acquire.
            Err(e) if e.status() == Some(409) => return None,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
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
    let all = [0usize, 1, 2];
    let leader = c.wait_voters(3, &all).await.unwrap() as usize - 1;
    let clients: Vec<usize> = all.iter().copied().filter(|i| *i != leader).collect();
    http::api(&c.bases[clients[0]])
        .kv_put("counter", "0")
        .await
        .unwrap();

    tracing::info!("phase: two clients race for the lock");
    let grants_done = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut tasks = Vec::new();
    for (n, &node) in clients.iter().enumerate() {
        let api = http::api(&c.bases[node]);
        let done = grants_done.clone();
        tasks.push(tokio::spawn(async move {
            let mut grants = Vec::new();
            let mut inc = Increments::default();
            let mut attempt = 0;
            while done.load(Ordering::SeqCst) < total && Instant::now() < deadline {
                attempt += 1;
                let idem = format!("c{n}-a{attempt}");
                let Some(fence) = acquire(&api, "race", &format!("c{n}"), &idem, deadline).await
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
                if let Ok(v) = api.kv_get("counter").await {
                    let text = std::str::from_utf8(&v.value).unwrap();
                    let next = text.parse::<u64>().unwrap() + 1;
                    let r = api
                        .kv_put_with("counter", next.to_string(), &fenced("race", fence))
                        .await;
                    match r.map_err(|e| e.status()) {
                        Ok(_) => inc.ok += 1,
                        Err(Some(409)) => inc.stale += 1,
                        Err(_) => inc.unknown += 1,
                    }
                }
                let release_sent = Instant::now();
                let released = api
                    .idempotent(format!("{idem}-release"))
                    .lock_release("race", fence)
                    .await;
                if released.is_ok() {
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
    let v = http::api(&c.bases[clients[0]])
        .kv_get("counter")
        .await
        .unwrap();
    let counter: u64 = std::str::from_utf8(&v.value).unwrap().parse().unwrap();
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
    let new_fence = http::api(&c.bases[2])
        .lock_acquire("pause-lock", &acquire_request("holder-2", 30000, 10000))
        .await
        .unwrap()
        .fence;
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
        let e = http::api(base).kv_get("guarded").await.unwrap_err();
        assert_eq!(
            e.status(),
            Some(404),
            "the stale write left nothing on {base}"
        );
    }
    http::api(&c.bases[0])
        .kv_put_with(
            "guarded",
            "from-new-holder",
            &fenced("pause-lock", new_fence),
        )
        .await
        .expect("the current holder's fenced write applies");
    c.shutdown().await;
}

/// Waiters on different nodes are served in arrival order, and each blocking acquire returns
/// as soon as the lock is released to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_acquires_are_served_in_arrival_order_on_any_node() {
    let c = InprocCluster::start(3).await.unwrap();
    let apis: Vec<Client> = c.bases.iter().map(|b| http::api(b)).collect();
    let first_fence = apis[0]
        .lock_acquire("q", &acquire_request("first", 60000, 0))
        .await
        .unwrap()
        .fence;

    let mut waiters = Vec::new();
    for (i, api) in apis.iter().enumerate() {
        let api = api.clone();
        waiters.push(tokio::spawn(async move {
            api.lock_acquire("q", &acquire_request(&format!("w{i}"), 60000, 20000))
                .await
        }));
        // Arrival order: each waiter is queued before the next one is sent.
        wait_for("waiter queued", Duration::from_secs(10), || async {
            let v = apis[0].lock_get("q").await.ok()?;
            (v.waiters == i as u64 + 1).then_some(())
        })
        .await
        .unwrap();
    }
    let mut fence = first_fence;
    for (i, w) in waiters.into_iter().enumerate() {
        apis[(i + 1) % 3].lock_release("q", fence).await.unwrap();
        let b = w.await.unwrap().unwrap();
        assert_eq!(b.owner, format!("w{i}"), "served in arrival order");
        assert!(b.fence > fence);
        fence = b.fence;
    }

    tracing::info!("phase: a waiter whose wait ends gets 409 with the holder");
    let start = Instant::now();
    let e = apis[1]
        .lock_acquire("q", &acquire_request("late", 1000, 300))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409), "{e:?}");
    assert_eq!(e.detail().unwrap().holder.as_deref(), Some("w2"));
    assert!(start.elapsed() >= Duration::from_millis(300));
    c.shutdown().await;
}
