//! Convergence: after healing, every node holds the same state: the same keys, values and
//! revisions listed, and the same digest of the whole state (every primitive) at the same
//! applied index.

use std::time::Duration;

use anyhow::{bail, Result};
use node::api::client::{Client, KvListQuery};

use crate::http::wait_for;

/// A listed key as compared across nodes: key, value (base64) and revision.
pub type Listed = (String, String, u64);

/// Every node reaches the same applied index and then lists the same keys, values and
/// revisions from its local state.
pub async fn converged(bases: &[String]) -> Result<()> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?;
    let apis: Vec<Client> = bases
        .iter()
        .map(|b| Client::with_http(b, http.clone()))
        .collect();
    wait_for(
        "every node at the same applied index and revision",
        Duration::from_secs(30),
        || async {
            let mut seen = None;
            for api in &apis {
                let s = crate::http::status(api).await?;
                let at = (s.applied_index, s.revision);
                if seen.is_some_and(|x| x != at) {
                    return None;
                }
                seen = Some(at);
            }
            seen
        },
    )
    .await?;
    let mut first: Option<Vec<Listed>> = None;
    for (i, api) in apis.iter().enumerate() {
        let items = list_all(api).await?;
        match &first {
            None => first = Some(items),
            Some(f) if *f == items => {}
            Some(f) => {
                let diff = f
                    .iter()
                    .zip(&items)
                    .find(|(a, b)| a != b)
                    .map(|(a, b)| format!("n1 has {a:?}, n{} has {b:?}", i + 1))
                    .unwrap_or_else(|| {
                        format!("n1 lists {} keys, n{} {}", f.len(), i + 1, items.len())
                    });
                bail!("nodes diverge after healing: {diff}");
            }
        }
    }
    same_digests(&apis).await
}

/// Every node's digest of its whole state, once all answer for the same applied index (a
/// leader's tick may still move it), is the same.
pub async fn same_digests(apis: &[Client]) -> Result<()> {
    let digests = wait_for(
        "every node's state digest at one applied index",
        Duration::from_secs(30),
        || async {
            let mut all = Vec::new();
            for api in apis {
                all.push(api.state_digest().await.ok()?);
            }
            all.iter()
                .all(|d| d.applied_index == all[0].applied_index)
                .then_some(all)
        },
    )
    .await?;
    if let Some(d) = digests.iter().find(|d| d.sha256 != digests[0].sha256) {
        bail!(
            "the states diverge at applied index {:?}: node {} has {} records with digest {}, node {} {} records with digest {}",
            d.applied_index,
            digests[0].node_id,
            digests[0].records,
            digests[0].sha256,
            d.node_id,
            d.records,
            d.sha256
        );
    }
    Ok(())
}

/// Every key of `api`'s node, from its local state (`consistency=stale`), page by page.
pub async fn list_all(api: &Client) -> Result<Vec<Listed>> {
    let stale = api.stale();
    let mut items = Vec::new();
    let mut q = KvListQuery {
        prefix: Some(String::new()),
        limit: Some(1000),
        after: None,
    };
    for _ in 0..10_000 {
        let page = stale.kv_list(&q).await?;
        items.extend(page.items.into_iter().map(|i| (i.key, i.value, i.revision)));
        match page.next {
            Some(k) => q.after = Some(k),
            None => return Ok(items),
        }
    }
    bail!("listing {} did not end", api.base())
}
