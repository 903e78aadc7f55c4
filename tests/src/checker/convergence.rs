//! Convergence: after healing, every node holds the same KV state.

use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::Value;

use crate::http::wait_for;

/// Every node reaches the same applied index and then lists the same keys, values and
/// revisions from its local state.
pub async fn converged(bases: &[String]) -> Result<()> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?;
    wait_for(
        "every node at the same applied index and revision",
        Duration::from_secs(30),
        || async {
            let mut seen = None;
            for b in bases {
                let s = crate::http::cluster(&http, b).await?;
                let at = (s["applied_index"].as_u64()?, s["revision"].as_u64()?);
                if seen.is_some_and(|x| x != at) {
                    return None;
                }
                seen = Some(at);
            }
            seen
        },
    )
    .await?;
    let mut first: Option<Vec<Value>> = None;
    for (i, b) in bases.iter().enumerate() {
        let items = list_all(&http, b).await?;
        match &first {
            None => first = Some(items),
            Some(f) if *f == items => {}
            Some(f) => {
                let diff = f
                    .iter()
                    .zip(&items)
                    .find(|(a, b)| a != b)
                    .map(|(a, b)| format!("n1 has {a}, n{} has {b}", i + 1))
                    .unwrap_or_else(|| {
                        format!("n1 lists {} keys, n{} {}", f.len(), i + 1, items.len())
                    });
                bail!("nodes diverge after healing: {diff}");
            }
        }
    }
    Ok(())
}

pub async fn list_all(http: &reqwest::Client, base: &str) -> Result<Vec<Value>> {
    let mut items = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10_000 {
        let mut url = format!("{base}/v1/kv?prefix=&limit=1000&consistency=stale");
        if let Some(a) = &after {
            url.push_str("&after=");
            url.extend(form_urlencoded::byte_serialize(a.as_bytes()));
        }
        let page: Value = http
            .get(&url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next"].as_str() {
            Some(k) => after = Some(k.to_string()),
            None => return Ok(items),
        }
    }
    bail!("listing {base} did not end")
}
