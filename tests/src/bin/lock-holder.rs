//! A lock holder for tests, run as its own process so it can be paused with SIGSTOP.
//!
//! Usage: `lock-holder BASE_URL LOCK OWNER TTL_MS`. Acquires the lock and prints
//! `granted FENCE`, renews it every TTL/3 (printing `renewed` after the first renewal and
//! `lost STATUS BODY` when a renewal fails), and for each stdin line `write KEY VALUE` makes a
//! fenced write and prints `write STATUS BODY`. Exits at the end of stdin.

#![forbid(unsafe_code)]

use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [base, lock, owner, ttl_ms] = args.as_slice() else {
        anyhow::bail!("usage: lock-holder BASE_URL LOCK OWNER TTL_MS");
    };
    let ttl_ms: u64 = ttl_ms.parse()?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    let r = http
        .post(format!("{base}/v1/locks/{lock}/acquire"))
        .json(&json!({ "owner": owner, "ttl_ms": ttl_ms }))
        .send()
        .await?;
    let status = r.status().as_u16();
    let body: Value = r.json().await?;
    let Some(fence) = body["fence"].as_u64().filter(|_| status == 200) else {
        say(&format!("refused {status} {body}"));
        return Ok(());
    };
    say(&format!("granted {fence}"));

    let renew_http = http.clone();
    let renew_url = format!("{base}/v1/locks/{lock}/renew");
    tokio::spawn(async move {
        let mut first = true;
        loop {
            tokio::time::sleep(Duration::from_millis(ttl_ms / 3)).await;
            let r = renew_http
                .post(&renew_url)
                .json(&json!({ "fence": fence, "ttl_ms": ttl_ms }))
                .send()
                .await;
            match r {
                Ok(r) if r.status().is_success() => {
                    if std::mem::take(&mut first) {
                        say("renewed");
                    }
                }
                Ok(r) => {
                    let s = r.status().as_u16();
                    say(&format!("lost {s} {}", r.text().await.unwrap_or_default()));
                    return;
                }
                Err(e) => say(&format!("renew-error {e}")),
            }
        }
    });

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let mut parts = line.splitn(3, ' ');
        if let (Some("write"), Some(key), Some(value)) = (parts.next(), parts.next(), parts.next())
        {
            let r = http
                .put(format!("{base}/v1/kv/{key}?fence={lock}:{fence}"))
                .body(value.to_string())
                .send()
                .await?;
            let s = r.status().as_u16();
            say(&format!("write {s} {}", r.text().await.unwrap_or_default()));
        }
    }
    Ok(())
}
