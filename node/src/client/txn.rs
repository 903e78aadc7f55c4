//! `stackd txn`: send a transaction written as JSON.

use anyhow::Context;
use clap::Args;
use serde_json::Value;

use super::{print_json, Target};
use crate::api::model::TxnRequest;

/// Apply a transaction: compares, then the success or the failure writes, atomically.
///
/// The JSON (from FILE or stdin) is the body of `POST /v1/txn`, for example:
/// {"compare": [{"key": "a", "revision": 3}],
///  "success": [{"put": {"key": "a", "text": "new"}}, {"cache_invalidate": {"tags": ["a"]}}],
///  "failure": []}
#[derive(Args, Debug)]
pub struct TxnCmd {
    /// File with the transaction JSON; stdin when omitted.
    file: Option<std::path::PathBuf>,
    #[command(flatten)]
    target: Target,
}

pub async fn run(cmd: TxnCmd) -> anyhow::Result<()> {
    let text = match &cmd.file {
        Some(f) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        None => String::from_utf8(super::value_or_stdin(None)?)?,
    };
    let body: Value = serde_json::from_str(&text).context("the transaction is not JSON")?;
    let txn: TxnRequest = serde_json::from_value(body).context("the transaction is malformed")?;
    let answer = cmd.target.client()?.txn(&txn).await?;
    print_json(&answer)?;
    if !answer.succeeded {
        std::process::exit(2);
    }
    Ok(())
}
